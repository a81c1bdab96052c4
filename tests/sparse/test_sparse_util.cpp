#include "launch/method_options.h"
#include "tests/sparse/test_sparse_util.h"

#include <torch/torch.h>

#include <boost/program_options.hpp>

#include "model/load.h"
#include "sparse/methods.h"

namespace dt::testing {

std::unique_ptr<model::Backbone> tiny_backbone(const std::string& name) {
  torch::manual_seed(7);
  return model::make_backbone(model::named_config(name), /*num_labels=*/2);
}

model::Batch sample_batch(const model::ModelConfig& config, const std::vector<int64_t>& ids) {
  std::vector<at::Tensor> rows, labels;
  for (int64_t i : ids) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + i);
    rows.push_back(at::randint(3, config.vocab_size, {1, 6}, gen, at::TensorOptions().dtype(at::kLong)));
    labels.push_back(at::full({1}, i % 2, at::kLong));
  }
  model::Batch b;
  b.input_ids = at::cat(rows);
  b.attention_mask = at::ones_like(b.input_ids);
  b.labels = at::cat(labels);
  return b;
}

sparse::SampleFn sample_fn(const model::ModelConfig& config) {
  return [config](const std::vector<int64_t>& ids) { return sample_batch(config, ids); };
}

peft::MethodSet method_set(const std::string& method, const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  po::options_description desc;
  launch::add_method_options(desc);
  std::vector<std::string> argv = {"--method", method};
  argv.insert(argv.end(), args.begin(), args.end());
  po::variables_map vm;
  po::store(po::command_line_parser(argv).options(desc).run(), vm);
  po::notify(vm);
  return launch::method_set_from(vm);
}

}  // namespace dt::testing
