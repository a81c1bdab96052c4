// tests/peft/test_adapters_util.h — small helpers shared by the adapter, prefix and compacter tests:
// a MethodSet from command-line words, a tiny backbone, a batch, and trainables by name.
#pragma once

#include <c10/core/GradMode.h>
#include <ATen/ATen.h>

#include <boost/program_options.hpp>
#include <gtest/gtest.h>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "launch/method_options.h"
#include "model/load.h"
#include "model/t5.h"
#include "peft/method.h"

namespace dt::testing::adapters {

// A MethodSet from command-line words, the methods told the run's tasks (Method::set_tasks; none: one).
inline peft::MethodSet method_set_for_tasks(const std::vector<std::string>& args,
                                            const std::vector<std::string>& tasks) {
  namespace po = boost::program_options;
  po::options_description desc;
  launch::add_method_options(desc);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(desc).run(), vm);
  po::notify(vm);
  return peft::MethodSet::from_names(vm["method"].as<std::string>(), launch::method_option_values(vm), tasks);
}

inline peft::MethodSet method_set(const std::vector<std::string>& args) { return method_set_for_tasks(args, {}); }

// plan() and apply() agree: the same names and shapes in the same order, every tensor trainable.
inline void expect_attach_matches_plan(const std::vector<model::TensorMeta>& planned,
                                       const std::vector<peft::Trainable>& attached, const std::string& label) {
  ASSERT_EQ(planned.size(), attached.size()) << label;
  for (size_t i = 0; i < planned.size(); ++i) {
    EXPECT_EQ(planned[i].name, attached[i].name) << label;
    EXPECT_EQ(planned[i].shape, attached[i].tensor.sizes().vec()) << label << " " << planned[i].name;
    EXPECT_TRUE(attached[i].tensor.requires_grad()) << label << " " << planned[i].name;
  }
}

inline int64_t planned(const std::string& model, const std::vector<std::string>& args) {
  return model::total_params(method_set(args).plan(model::named_config(model), 0));
}

inline std::unique_ptr<model::Backbone> tiny(const std::string& name, uint64_t seed = 7) {
  at::manual_seed(seed);
  auto backbone = model::make_backbone(model::named_config(name), /*num_labels=*/2);
  if (auto* t5 = dynamic_cast<model::T5Backbone*>(backbone.get())) t5->set_label_token_ids({5, 6});
  return backbone;
}

inline model::Batch batch_for(const model::ModelConfig& config) {
  at::manual_seed(11);
  model::Batch b;
  b.input_ids = at::randint(3, config.vocab_size, {3, 6}, at::kLong);
  b.attention_mask = at::ones({3, 6}, at::kLong);
  b.attention_mask[2][5] = 0;
  b.labels = at::tensor({0, 1, 1}, at::kLong);
  return b;
}

// The method's own trainables (MethodSet::apply appends the task head's).
inline std::vector<peft::Trainable> without_head(std::vector<peft::Trainable> trainables) {
  std::vector<peft::Trainable> out;
  for (auto& t : trainables) {
    if (t.method != "head") out.push_back(std::move(t));
  }
  return out;
}

inline std::map<std::string, at::Tensor> by_name(const std::vector<peft::Trainable>& trainables) {
  std::map<std::string, at::Tensor> out;
  for (const auto& t : trainables) out[t.name] = t.tensor;
  return out;
}

// Fills every trainable with fresh random values (so zero-initialized up projections do something).
inline void randomize(const std::vector<peft::Trainable>& trainables, uint64_t seed = 3) {
  at::manual_seed(seed);
  c10::NoGradGuard no_grad;
  for (const auto& t : trainables) t.tensor.normal_(0.0, 0.5);
}

}  // namespace dt::testing::adapters
