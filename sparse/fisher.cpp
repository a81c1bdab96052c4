#include "sparse/fisher.h"

#include "model/device.h"
#include "model/parameter_map.h"

#include <fnmatch.h>
#include <torch/torch.h>

#include <map>
#include <sstream>

#include "util/error.h"

namespace dt::sparse {

std::vector<std::string> split_globs(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    const auto b = part.find_first_not_of(" \t"), e = part.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(part.substr(b, e - b + 1));
  }
  return out;
}

bool glob_match(const std::string& pattern, const std::string& name) {
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

bool matches_any(const std::vector<std::string>& patterns, const std::string& name) {
  for (const auto& p : patterns) {
    if (glob_match(p, name)) return true;
  }
  return false;
}


std::vector<model::TensorMeta> eligible_tensors(const model::ModelConfig& config,
                                                const std::vector<std::string>& include,
                                                const std::vector<std::string>& exclude) {
  std::vector<model::TensorMeta> out;
  for (auto& meta : model::describe(config)) {
    if (model::is_task_head(meta.name) || !matches_any(include, meta.name) || matches_any(exclude, meta.name)) continue;
    out.push_back(std::move(meta));
  }
  return out;
}

int64_t eligible_params(const model::ModelConfig& config, const std::vector<std::string>& include,
                        const std::vector<std::string>& exclude) {
  return model::total_params(eligible_tensors(config, include, exclude));
}

FisherKind parse_fisher_kind(const std::string& name) {
  if (name == "sample") return FisherKind::PerSample;
  if (name == "batch") return FisherKind::Batch;
  throw_usage_error("--fish.fisher '" + name + "': expected sample | batch");
}

NamedTensors compute_fisher(model::Backbone& backbone, const SampleFn& sample, int64_t num_samples,
                            comm::Communicator& comm, const FisherOptions& options) {
  DT_CHECK(num_samples > 0, "compute_fisher: no samples");
  const int64_t batch = options.kind == FisherKind::Batch ? options.batch_size : 1;
  DT_CHECK(batch > 0, "compute_fisher: batch size must be positive");

  // The eligible parameters, by name, in describe() order; their flags are restored at the end.
  const std::map<std::string, at::Tensor> by_name = model::parameters_by_name(backbone);
  std::vector<at::Tensor> params;
  NamedTensors fisher;
  for (const auto& meta : eligible_tensors(backbone.config(), options.include, options.exclude)) {
    auto it = by_name.find(meta.name);
    DT_CHECK(it != by_name.end(), "compute_fisher: the backbone has no parameter '" + meta.name + "'");
    params.push_back(it->second);
    // Accumulated where the parameter lives (the GPU with --device cuda), in float32.
    fisher.emplace_back(meta.name, at::zeros(it->second.sizes(), it->second.options().dtype(at::kFloat)));
  }
  DT_CHECK(!params.empty(), "compute_fisher: no eligible tensor (check --fish.include / --fish.exclude)");
  std::vector<bool> had_grad;
  for (auto& p : params) {
    had_grad.push_back(p.requires_grad());
    p.requires_grad_(true);
  }
  backbone.set_training(false);

  try {
    const int64_t num_batches = (num_samples + batch - 1) / batch;
    for (int64_t b = comm.rank(); b < num_batches; b += comm.size()) {
      std::vector<int64_t> ids;
      for (int64_t i = b * batch; i < std::min(num_samples, (b + 1) * batch); ++i) ids.push_back(i);
      const model::Batch input = model::batch_to(sample(ids), params.front().device());
      const at::Tensor loss = backbone.forward(input).loss;
      DT_CHECK(loss.defined(), "compute_fisher: the forward pass gave no loss (labels missing?)");
      // autograd::grad leaves .grad() alone; unused tensors (e.g. an untied LM head) give undefined.
      const auto grads = torch::autograd::grad({loss}, params, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                               /*create_graph=*/false, /*allow_unused=*/true);
      const double credit = static_cast<double>(ids.size());  // B x mean-loss gradient = sum of g_i
      for (size_t t = 0; t < params.size(); ++t) {
        if (!grads[t].defined()) continue;
        const at::Tensor g = grads[t].to(at::kFloat);
        if (credit == 1.0) {
          fisher[t].second.addcmul_(g, g);
        } else {
          fisher[t].second.addcmul_(g, g, credit * credit);
        }
      }
    }
  } catch (...) {
    for (size_t t = 0; t < params.size(); ++t) params[t].requires_grad_(had_grad[t]);
    throw;
  }
  for (size_t t = 0; t < params.size(); ++t) params[t].requires_grad_(had_grad[t]);

  // Sum over ranks, one all-reduce per tensor (issued in the same order everywhere).
  if (comm.size() > 1) {
    for (auto& [name, f] : fisher) comm.all_reduce(f, {comm::ReduceOp::Sum})->wait();
  }
  // The mask is selected on the host (top-k over counts of float keys).
  for (auto& [name, f] : fisher) f = f.to(at::kCPU);
  return fisher;
}

}  // namespace dt::sparse
