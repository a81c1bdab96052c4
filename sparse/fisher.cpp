#include "sparse/fisher.h"

#include "model/device.h"
#include "model/parameter_map.h"
#include "sparse/magnitude.h"

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

FisherShard parse_fisher_shard(const std::string& name) {
  if (name == "auto") return FisherShard::Auto;
  if (name == "on") return FisherShard::On;
  if (name == "off") return FisherShard::Off;
  throw_usage_error("--fish.fisher-shard '" + name + "': expected auto | on | off");
}

bool fisher_is_sharded(const model::ModelConfig& config, const comm::Communicator& comm, const FisherOptions& options) {
  // Only where the top-k splits too: its ranks read exactly the tensors each rank keeps here.
  if (!splits_top_k(&comm) || options.shard == FisherShard::Off) return false;
  return options.shard == FisherShard::On ||
         4 * eligible_params(config, options.include, options.exclude) > options.shard_above_bytes;
}

namespace {

// Consecutive runs of tensors of at most `max_bytes` (at least one tensor each): [begin, end) pairs.
std::vector<std::pair<size_t, size_t>> gradient_groups(const std::vector<at::Tensor>& params, int64_t max_bytes) {
  std::vector<std::pair<size_t, size_t>> groups;
  size_t begin = 0;
  int64_t bytes = 0;
  for (size_t t = 0; t < params.size(); ++t) {
    const int64_t b = params[t].numel() * static_cast<int64_t>(params[t].element_size());
    if (t > begin && bytes + b > max_bytes) {
      groups.emplace_back(begin, t);
      begin = t;
      bytes = 0;
    }
    bytes += b;
  }
  groups.emplace_back(begin, params.size());
  return groups;
}

}  // namespace

NamedTensors compute_fisher(model::Backbone& backbone, const SampleFn& sample, int64_t num_samples,
                            comm::Communicator& comm, const FisherOptions& options) {
  DT_CHECK(num_samples > 0, "compute_fisher: no samples");
  const int64_t batch = options.kind == FisherKind::Batch ? options.batch_size : 1;
  DT_CHECK(batch > 0, "compute_fisher: batch size must be positive");
  const bool sharded = fisher_is_sharded(backbone.config(), comm, options);

  // The eligible parameters, by name, in describe() order; their flags are restored at the end.
  const std::map<std::string, at::Tensor> by_name = model::parameters_by_name(backbone);
  const std::vector<model::TensorMeta> metas = eligible_tensors(backbone.config(), options.include, options.exclude);
  const std::vector<bool> kept = sharded ? tensors_read_by(metas, options.per_tensor_top_k, comm.rank(), comm.size())
                                         : std::vector<bool>(metas.size(), true);
  std::vector<at::Tensor> params;
  NamedTensors fisher;
  for (size_t t = 0; t < metas.size(); ++t) {
    auto it = by_name.find(metas[t].name);
    DT_CHECK(it != by_name.end(), "compute_fisher: the backbone has no parameter '" + metas[t].name + "'");
    params.push_back(it->second);
    // Accumulated where the parameter lives (the GPU with --device cuda), in float32.
    const auto options32 = it->second.options().dtype(at::kFloat);
    fisher.emplace_back(metas[t].name, kept[t] ? at::zeros(it->second.sizes(), options32)
                                               : at::zeros({}, options32).expand(it->second.sizes()));
  }
  DT_CHECK(!params.empty(), "compute_fisher: no eligible tensor (check --fish.include / --fish.exclude)");
  std::vector<bool> had_grad;
  for (auto& p : params) {
    had_grad.push_back(p.requires_grad());
    p.requires_grad_(true);
  }
  backbone.set_training(false);
  const auto groups = gradient_groups(params, options.grad_group_bytes);

  try {
    // Rounds of one batch per rank (batch b goes to rank b mod W). Unsharded, a rank without a batch
    // in the last round has nothing to do; sharded, it still joins the round's all-reduces with zeros.
    const int64_t num_batches = (num_samples + batch - 1) / batch;
    const int64_t rounds = (num_batches + comm.size() - 1) / comm.size();
    for (int64_t round = 0; round < rounds; ++round) {
      const int64_t b = round * comm.size() + comm.rank();
      const bool has_batch = b < num_batches;
      if (!has_batch && !sharded) continue;
      at::Tensor loss;
      std::vector<int64_t> ids;
      if (has_batch) {
        for (int64_t i = b * batch; i < std::min(num_samples, (b + 1) * batch); ++i) ids.push_back(i);
        const model::Batch input = model::batch_to(sample(ids), params.front().device());
        loss = backbone.forward(input).loss;
        DT_CHECK(loss.defined(), "compute_fisher: the forward pass gave no loss (labels missing?)");
      }
      const double credit = static_cast<double>(ids.size());  // B x mean-loss gradient = sum of g_i
      for (size_t gi = 0; gi < groups.size(); ++gi) {
        const auto [first, last] = groups[gi];
        std::vector<at::Tensor> grads(last - first);
        if (has_batch) {
          // autograd::grad leaves .grad() alone; unused tensors (e.g. an untied LM head) give undefined.
          const std::vector<at::Tensor> group(params.begin() + static_cast<std::ptrdiff_t>(first),
                                              params.begin() + static_cast<std::ptrdiff_t>(last));
          grads = torch::autograd::grad({loss}, group, /*grad_outputs=*/{}, /*retain_graph=*/gi + 1 < groups.size(),
                                        /*create_graph=*/false, /*allow_unused=*/true);
        }
        for (size_t t = first; t < last; ++t) {
          at::Tensor& g_any = grads[t - first];
          // into += credit^2 g^2 in float32 (credit 1: value 1, addcmul's default)
          auto add_square = [&](at::Tensor& into) {
            if (!g_any.defined()) return;
            const at::Tensor g = g_any.to(at::kFloat);
            into.addcmul_(g, g, credit * credit);
          };
          if (!sharded) {
            add_square(fisher[t].second);
          } else {
            // This rank's squares (computed as the unsharded sum would start), summed over ranks.
            at::Tensor square = at::zeros(params[t].sizes(), params[t].options().dtype(at::kFloat));
            add_square(square);
            comm.all_reduce(square, {comm::ReduceOp::Sum})->wait();
            if (kept[t]) fisher[t].second.add_(square);
          }
          g_any = at::Tensor();  // the group's gradients go as they are used
        }
      }
    }
  } catch (...) {
    for (size_t t = 0; t < params.size(); ++t) params[t].requires_grad_(had_grad[t]);
    throw;
  }
  for (size_t t = 0; t < params.size(); ++t) params[t].requires_grad_(had_grad[t]);

  // Unsharded: sum over ranks, one all-reduce per tensor (issued in the same order everywhere).
  if (!sharded && comm.size() > 1) {
    for (auto& [name, f] : fisher) comm.all_reduce(f, {comm::ReduceOp::Sum})->wait();
  }
  // The mask is selected on the host (top-k over counts of float keys).
  for (auto& [name, f] : fisher) f = f.to(at::kCPU);
  return fisher;
}

}  // namespace dt::sparse
