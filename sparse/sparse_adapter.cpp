// sparse/sparse_adapter.cpp — SparseAdapter (He et al., Findings of EMNLP 2022, "SparseAdapter: An Easy
// Approach for Improving the Parameter-Efficiency of Adapters"): adapters pruned at initialisation.
//
// An adapter method's bottlenecks (--sparse-adapter.adapter houlsby | pfeiffer | parallel, with that
// method's own options: --houlsby.bottleneck, --pfeiffer.activation, --parallel_adapter.scale, ...) are
// drawn dense, scored, and pruned to --sparse-adapter.ratio of their weight matrices (0.8: 80% of the
// down and up weights removed; the biases stay dense). The mask is fixed from then on and the trainable
// state is one values vector "sparse_adapter.values" [k] over the kept flat indices (as FISH's), so the
// optimizer state and the gradient all-reduce are exactly the kept values: bytes/step = 4 × (k + biases),
// not the dense adapter. "Large-Sparse" (the paper's §4): a bigger bottleneck at the same trainable
// count, e.g. --houlsby.bottleneck 320 --sparse-adapter.ratio 0.8 ≈ the dense 64.
//
// Scores (--sparse-adapter.score), of each dense weight W with g = Σ_b ∂L_b/∂W over the scoring batches
// (--sparse-adapter.samples training examples in batches of --sparse-adapter.batch-size, sharded over
// ranks and summed by all-reduce, as FISH's Fisher pass; the model in eval mode):
//   snip       |g ⊙ W|                                        (Lee et al. 2019), global top-k
//   grasp      keep the lowest −W ⊙ (H g), H the loss Hessian (Wang et al. 2020; Hg by double backward
//              over the same batches, g fixed), global
//   magnitude  |W|, global
//   random     uniform noise (--sparse-adapter.seed), the same density in every tensor
//   erk        uniform noise within Erdős–Rényi-Kernel densities ∝ (rows + cols) / (rows · cols) (Evci et
//              al. 2020, capped at 1); an adapter's down and up have the same ratio, so ERK spreads the
//              kept count evenly over same-shaped bottlenecks
// Global selections use sparse/mask.h's top-k (ties by position, the same on every rank); k is round((1 −
// ratio) × the weights' total) there and Σ round((1 − ratio) × n_t) (ERK: its per-tensor counts) for the
// per-tensor ones — closed forms, so plan() knows k before any data is seen.
// Initialisation: down and up both drawn N(0, 1e-2²) truncated at 2σ (Houlsby et al.'s near-identity for
// both, §3.6; parallel: down U(±1/√d) as parallel_adapter's), biases zero. Unlike `houlsby` here, up is not
// zero: pruning at initialisation scores W and g ⊙ W, which are all zero on a zero matrix, so the up
// projection's mask would be arbitrary. Not identity at step 0 (the up projection starts small).
// --sparse-adapter.ratio 0 keeps every entry: the dense adapter with the same initial values, bit for bit
// (tests/peft/test_sparse_adapter.cpp).
// Checkpoints store the mask (fixed_indices, "<site>.adapter.{down,up}.weight"), eval and resume restore
// it (use_stored_indices) instead of scoring again; describe() carries the mask's hash once known.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>

#include "model/device.h"
#include "peft/adapter/adapter.h"
#include "sparse/index_codec.h"
#include "sparse/methods.h"
#include "sparse/scatter.h"
#include "util/error.h"

namespace dt::sparse {
namespace {

enum class AdapterKind { Houlsby, Pfeiffer, Parallel };
enum class PruneScore { Snip, Grasp, Magnitude, Random, Erk };

struct SparseAdapterOptions {
  AdapterKind adapter = AdapterKind::Houlsby;
  int64_t bottleneck = 64;  // from the adapter method's own section
  peft::adapter::Activation activation = peft::adapter::Activation::Relu;
  double scale = 4.0;  // parallel only
  double ratio = 0.8;  // fraction of the weight matrices pruned
  PruneScore score = PruneScore::Snip;
  int64_t samples = 64;
  int64_t batch_size = 16;
  uint64_t seed = 0;
};

const char* adapter_name(AdapterKind a) {
  switch (a) {
    case AdapterKind::Houlsby: return "houlsby";
    case AdapterKind::Pfeiffer: return "pfeiffer";
    case AdapterKind::Parallel: return "parallel";
  }
  return "?";
}

const char* score_name(PruneScore s) {
  switch (s) {
    case PruneScore::Snip: return "snip";
    case PruneScore::Grasp: return "grasp";
    case PruneScore::Magnitude: return "magnitude";
    case PruneScore::Random: return "random";
    case PruneScore::Erk: return "erk";
  }
  return "?";
}

bool global_selection(PruneScore s) { return s != PruneScore::Random && s != PruneScore::Erk; }

// One adapter: where it reads and writes, and its module name ("<site>.adapter" / ".parallel_adapter").
struct AdapterSite {
  model::SiteInfo site;
  std::string module;
  int64_t in = 0, out = 0;  // the bottleneck maps in -> m -> out
};

std::vector<AdapterSite> adapter_sites(const model::ModelConfig& config, const SparseAdapterOptions& o) {
  std::vector<AdapterSite> out;
  const bool parallel = o.adapter == AdapterKind::Parallel;
  const auto sites = o.adapter == AdapterKind::Houlsby ? peft::adapter::houlsby_sites(config)
                                                       : peft::adapter::ffn_sites(config);
  for (const auto& s : sites) {
    if (parallel) {
      DT_CHECK(s.in_features == s.out_features, "sparse_adapter: parallel adapter site '" + s.name +
                                                    "' maps " + std::to_string(s.in_features) + " -> " +
                                                    std::to_string(s.out_features) + " features");
    }
    out.push_back({s, s.name + (parallel ? ".parallel_adapter" : ".adapter"), s.out_features, s.out_features});
  }
  return out;
}

// The pruned tensors, per site down then up, in registration order.
std::vector<model::TensorMeta> pruned_tensors(const model::ModelConfig& config, const SparseAdapterOptions& o) {
  std::vector<model::TensorMeta> out;
  for (const auto& a : adapter_sites(config, o)) {
    out.push_back({a.module + ".down.weight", {o.bottleneck, a.in}});
    out.push_back({a.module + ".up.weight", {a.out, o.bottleneck}});
  }
  return out;
}

// ERK's kept count per tensor: density ε·(rows + cols)/(rows·cols), ε such that the counts sum to
// keep × total, densities above 1 capped (those tensors kept whole, ε solved again for the rest).
std::vector<int64_t> erk_counts(const std::vector<model::TensorMeta>& tensors, double keep) {
  const size_t n = tensors.size();
  std::vector<double> raw(n);
  std::vector<bool> dense(n, false);
  double total = 0;
  for (size_t t = 0; t < n; ++t) {
    const double rows = static_cast<double>(tensors[t].shape[0]), cols = static_cast<double>(tensors[t].shape[1]);
    raw[t] = (rows + cols) / (rows * cols);
    total += static_cast<double>(tensors[t].numel());
  }
  double epsilon = 0;
  for (bool changed = true; changed;) {
    changed = false;
    double budget = keep * total, weighted = 0;
    for (size_t t = 0; t < n; ++t) {
      if (dense[t]) {
        budget -= static_cast<double>(tensors[t].numel());
      } else {
        weighted += raw[t] * static_cast<double>(tensors[t].numel());
      }
    }
    epsilon = weighted > 0 ? budget / weighted : 0;
    for (size_t t = 0; t < n; ++t) {
      if (!dense[t] && epsilon * raw[t] > 1.0) dense[t] = changed = true;
    }
  }
  std::vector<int64_t> counts(n);
  for (size_t t = 0; t < n; ++t) {
    const int64_t numel = tensors[t].numel();
    counts[t] = dense[t] ? numel
                         : std::min<int64_t>(numel, std::llround(epsilon * raw[t] * static_cast<double>(numel)));
  }
  return counts;
}

// Kept entries per tensor for the per-tensor selections (random: the same density everywhere).
std::vector<int64_t> per_tensor_counts(const std::vector<model::TensorMeta>& tensors, const SparseAdapterOptions& o) {
  const double keep = 1.0 - o.ratio;
  if (o.score == PruneScore::Erk) return erk_counts(tensors, keep);
  std::vector<int64_t> counts;
  for (const auto& t : tensors) counts.push_back(mask_count({t}, TopKOptions{keep, 0, false}));
  return counts;
}

int64_t kept_count(const model::ModelConfig& config, const SparseAdapterOptions& o) {
  const auto tensors = pruned_tensors(config, o);
  if (global_selection(o.score)) return mask_count(tensors, TopKOptions{1.0 - o.ratio, 0, false});
  int64_t k = 0;
  for (int64_t c : per_tensor_counts(tensors, o)) k += c;
  return k;
}

// The run's dense initial weights (the draws every rank makes alike from torch's generator).
struct DenseInit {
  std::vector<at::Tensor> down, up;  // per site
};

DenseInit draw_dense(const std::vector<AdapterSite>& sites, const SparseAdapterOptions& o) {
  DenseInit d;
  for (const auto& a : sites) {
    if (o.adapter == AdapterKind::Parallel) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(a.in));
      d.down.push_back(at::empty({o.bottleneck, a.in}, at::kFloat).uniform_(-bound, bound));
    } else {
      d.down.push_back(peft::adapter::truncated_normal({o.bottleneck, a.in}, 1e-2));
    }
    d.up.push_back(peft::adapter::truncated_normal({a.out, o.bottleneck}, 1e-2));
  }
  return d;
}

// h' for one adapter with weights (down, up) and biases: sequential h + up(act(down(h))) or parallel
// h + s · up(relu(down(x))).
at::Tensor adapter_output(const SparseAdapterOptions& o, const at::Tensor& h, const at::Tensor& x,
                          const at::Tensor& down, const at::Tensor& down_bias, const at::Tensor& up,
                          const at::Tensor& up_bias) {
  peft::adapter::Bottleneck b{down, down_bias, up, up_bias};
  if (o.adapter == AdapterKind::Parallel) return h + b.forward(x, peft::adapter::Activation::Relu) * o.scale;
  return h + b.forward(h, o.activation);
}

// Σ over this rank's scoring batches of f(batch), then summed over ranks: the sharding of FISH's pass.
template <typename PerBatch>
void over_scoring_batches(const peft::TrainingData& data, const SparseAdapterOptions& o, comm::Communicator& comm,
                          const c10::Device& device, PerBatch per_batch) {
  const int64_t samples = std::min(o.samples, data.available);
  DT_CHECK(samples > 0, "sparse_adapter: no training examples to score the adapters on");
  const int64_t batches = (samples + o.batch_size - 1) / o.batch_size;
  for (int64_t b = comm.rank(); b < batches; b += comm.size()) {
    std::vector<int64_t> ids;
    for (int64_t i = b * o.batch_size; i < std::min(samples, (b + 1) * o.batch_size); ++i) ids.push_back(i);
    per_batch(model::batch_to(data.sample(ids), device));
  }
}

void sum_over_ranks(std::vector<at::Tensor>& tensors, comm::Communicator& comm) {
  if (comm.size() == 1) return;
  for (auto& t : tensors) comm.all_reduce(t, {comm::ReduceOp::Sum})->wait();  // same order on every rank
}

class SparseAdapter final : public peft::Method {
 public:
  explicit SparseAdapter(SparseAdapterOptions options) : options_(options) {}
  std::string name() const override { return "sparse_adapter"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    std::vector<model::TensorMeta> out = {{"sparse_adapter.values", {mask_ ? mask_->count() : kept_count(config, options_)}}};
    for (const auto& a : adapter_sites(config, options_)) {
      out.push_back({a.module + ".down.bias", {options_.bottleneck}});
      out.push_back({a.module + ".up.bias", {a.out}});
    }
    return out;
  }

  std::string describe() const override {
    std::string text = fmt::format("sparse_adapter(adapter={},bottleneck={},activation={},ratio={},score={},samples={},"
                                   "batch_size={},seed={}",
                                   adapter_name(options_.adapter), options_.bottleneck,
                                   peft::adapter::activation_name(options_.activation), options_.ratio,
                                   score_name(options_.score), options_.samples, options_.batch_size, options_.seed);
    if (options_.adapter == AdapterKind::Parallel) text += fmt::format(",scale={}", options_.scale);
    if (mask_) text += ",mask=" + mask_->hash_hex();
    return text + ")";
  }

  std::optional<peft::IndexAccounting> index_accounting(const model::ModelConfig& config) const override {
    peft::IndexAccounting a;
    const auto tensors = pruned_tensors(config, options_);
    a.eligible_params = model::total_params(tensors);
    if (mask_) {
      for (const auto& e : mask_->entries) {
        const at::Tensor idx = e.indices.to(at::kLong).contiguous();
        a.index_bytes += encoded_index_bytes({idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel()}, e.numel());
      }
      return a;
    }
    // Global selections: assume the kept entries spread in proportion to the tensors' sizes.
    const std::vector<int64_t> counts = global_selection(options_.score) ? std::vector<int64_t>{} :
                                                                            per_tensor_counts(tensors, options_);
    const double density = static_cast<double>(kept_count(config, options_)) / static_cast<double>(a.eligible_params);
    for (size_t t = 0; t < tensors.size(); ++t) {
      const int64_t count = counts.empty() ? std::llround(density * static_cast<double>(tensors[t].numel())) : counts[t];
      a.index_bytes += index_bytes_bound(count, tensors[t].numel());
    }
    return a;
  }

  bool needs_prepare() const override {
    return !mask_ && (options_.score == PruneScore::Snip || options_.score == PruneScore::Grasp);
  }

  // Scores the dense adapters on training batches (collective), then fixes the mask.
  void prepare(model::Backbone& backbone, const peft::TrainingData& data, comm::Communicator& comm) override {
    if (!needs_prepare()) return;
    DT_CHECK(backbone.hooks().empty(),
             "sparse_adapter: scoring runs before any method attaches (other hooks are on the backbone)");
    const auto sites = adapter_sites(backbone.config(), options_);
    ensure_dense(sites);
    mask_ = std::make_shared<Mask>(select(data_scores(backbone, sites, data, comm), backbone.config()));
  }

  std::vector<peft::Trainable> attach(model::Backbone& backbone) override {
    const model::ModelConfig& config = backbone.config();
    const auto sites = adapter_sites(config, options_);
    ensure_dense(sites);
    if (!mask_) {
      DT_CHECK(!needs_prepare(), std::string("sparse_adapter: --sparse-adapter.score ") + score_name(options_.score) +
                                  " scores on training data: prepare() must run before attach()");
      mask_ = std::make_shared<Mask>(select(weight_scores(), config));
    }
    check_mask_fits(*mask_, pruned_tensors(config, options_), "sparse_adapter mask");
    if (mask_->count() != kept_count(config, options_)) {
      throw_usage_error(fmt::format("sparse_adapter: the mask keeps {} entries, --sparse-adapter.ratio {} keeps {}",
                                    mask_->count(), options_.ratio, kept_count(config, options_)));
    }

    // The kept initial values, tensor after tensor in mask order: one contiguous leaf (one bucket).
    std::vector<at::Tensor> pieces;
    state_->slices.clear();
    int64_t begin = 0;
    for (size_t s = 0; s < sites.size(); ++s) {
      for (const bool up : {false, true}) {
        const std::string weight = sites[s].module + (up ? ".up.weight" : ".down.weight");
        const MaskEntry* e = mask_->find(weight);
        const at::Tensor idx = e ? e->indices.to(at::kLong) : at::empty({0}, at::kLong);
        const at::Tensor& init = up ? dense_.up[s] : dense_.down[s];
        pieces.push_back(init.reshape(-1).index_select(0, idx));
        state_->slices[weight] = {idx, at::zeros_like(init), begin, idx.numel()};
        begin += idx.numel();
      }
    }
    values_ = at::cat(pieces).detach().requires_grad_(true);  // a leaf
    std::vector<peft::Trainable> out = {{"sparse_adapter.values", values_, name()}};

    const at::Tensor values = values_;
    const auto state = state_;
    const SparseAdapterOptions o = options_;
    for (const auto& a : sites) {
      const at::Tensor down_bias = at::zeros({o.bottleneck}, at::kFloat).requires_grad_(true);
      const at::Tensor up_bias = at::zeros({a.out}, at::kFloat).requires_grad_(true);
      const std::string down_name = a.module + ".down.weight", up_name = a.module + ".up.weight";
      backbone.hooks().add_output(a.site.name, [=](const at::Tensor& h, const at::Tensor& x) {
        const Slice& d = state->slices.at(down_name);
        const Slice& u = state->slices.at(up_name);
        return adapter_output(o, h, x, add_scattered(d.zeros, d.indices, values.narrow(0, d.begin, d.count)), down_bias,
                              add_scattered(u.zeros, u.indices, values.narrow(0, u.begin, u.count)), up_bias);
      });
      out.push_back({a.module + ".down.bias", down_bias, name()});
      out.push_back({a.module + ".up.bias", up_bias, name()});
    }
    return out;
  }

  void to(const c10::Device& device) override {
    for (auto& [weight, slice] : state_->slices) {
      model::move_tensor(slice.indices, device);
      model::move_tensor(slice.zeros, device);
    }
  }

  std::vector<peft::FixedIndices> fixed_indices() const override {
    std::vector<peft::FixedIndices> out;
    if (!mask_) return out;
    for (const auto& e : mask_->entries) out.push_back({e.name, e.shape, e.indices});
    return out;
  }

  // A checkpoint's mask (restore_indices hands the adapter tensors flat: [numel]); attach() checks it
  // against this run's adapter shapes.
  void use_stored_indices(std::vector<peft::FixedIndices> stored) override {
    if (stored.empty()) throw_usage_error("sparse_adapter: the checkpoint holds no sparse_adapter mask");
    Mask mask;
    for (auto& s : stored) mask.entries.push_back({s.weight, s.shape, s.indices});
    stored_flat_ = true;
    mask_ = std::make_shared<Mask>(std::move(mask));
  }

 private:
  struct Slice {
    at::Tensor indices;  // int64 flat indices into the dense weight
    at::Tensor zeros;    // the pruned dense weight's frozen zeros (its shape)
    int64_t begin = 0, count = 0;
  };
  struct State {
    std::map<std::string, Slice> slices;
  };

  void ensure_dense(const std::vector<AdapterSite>& sites) {
    if (dense_.down.empty()) dense_ = draw_dense(sites, options_);
    if (stored_flat_) {  // give the stored (flat) entries this run's shapes; check_mask_fits compares numels
      for (auto& e : mask_->entries) {
        for (size_t s = 0; s < sites.size(); ++s) {
          if (e.name == sites[s].module + ".down.weight" && e.numel() == dense_.down[s].numel()) {
            e.shape = dense_.down[s].sizes().vec();
          }
          if (e.name == sites[s].module + ".up.weight" && e.numel() == dense_.up[s].numel()) {
            e.shape = dense_.up[s].sizes().vec();
          }
        }
      }
      stored_flat_ = false;
    }
  }

  std::vector<std::pair<std::string, at::Tensor>> named_dense() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    const auto& sites_down = dense_.down;
    for (size_t s = 0; s < sites_down.size(); ++s) {
      out.emplace_back(std::to_string(2 * s), dense_.down[s]);
      out.emplace_back(std::to_string(2 * s + 1), dense_.up[s]);
    }
    return out;
  }

  // magnitude, random and erk: from the weights (and the seed) alone.
  std::vector<at::Tensor> weight_scores() const {
    std::vector<at::Tensor> scores;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options_.seed);
    for (const auto& [index, w] : named_dense()) {
      if (options_.score == PruneScore::Magnitude) {
        scores.push_back(w.abs());
      } else {
        scores.push_back(at::empty(w.sizes(), at::kFloat).uniform_(0.0, 1.0, gen));
      }
    }
    return scores;
  }

  // snip and grasp: gradients of the loss through the dense adapters, attached for the scoring only.
  std::vector<at::Tensor> data_scores(model::Backbone& backbone, const std::vector<AdapterSite>& sites,
                                      const peft::TrainingData& data, comm::Communicator& comm) const {
    const c10::Device device = backbone.named_parameters().empty() ? c10::Device(c10::kCPU)
                                                                   : backbone.named_parameters().front().second.device();
    std::vector<at::Tensor> weights;  // down, up per site: leaves on the backbone's device
    for (size_t s = 0; s < sites.size(); ++s) {
      // Copies: the draws themselves stay plain tensors (attach() takes the kept values from them).
      weights.push_back(dense_.down[s].to(device).clone().requires_grad_(true));
      weights.push_back(dense_.up[s].to(device).clone().requires_grad_(true));
    }
    const SparseAdapterOptions o = options_;
    for (size_t s = 0; s < sites.size(); ++s) {
      const at::Tensor down = weights[2 * s], up = weights[2 * s + 1];
      const at::Tensor down_bias = at::zeros({o.bottleneck}, down.options().requires_grad(false));
      const at::Tensor up_bias = at::zeros({sites[s].out}, up.options().requires_grad(false));
      backbone.hooks().add_output(sites[s].site.name, [=](const at::Tensor& h, const at::Tensor& x) {
        return adapter_output(o, h, x, down, down_bias, up, up_bias);
      });
    }
    backbone.set_training(false);
    std::vector<at::Tensor> scores;
    try {
      std::vector<at::Tensor> g;
      for (const auto& w : weights) g.push_back(at::zeros_like(w, w.options().requires_grad(false)));
      auto loss_of = [&](const model::Batch& batch) {
        const at::Tensor loss = backbone.forward(batch).loss;
        DT_CHECK(loss.defined(), "sparse_adapter: the forward pass gave no loss (labels missing?)");
        return loss;
      };
      over_scoring_batches(data, o, comm, device, [&](const model::Batch& batch) {
        const auto grads = torch::autograd::grad({loss_of(batch)}, weights, {}, false, false, true);
        for (size_t t = 0; t < weights.size(); ++t) {
          if (grads[t].defined()) g[t].add_(grads[t]);
        }
      });
      sum_over_ranks(g, comm);
      if (o.score == PruneScore::Snip) {
        for (size_t t = 0; t < weights.size(); ++t) scores.push_back((g[t] * weights[t].detach()).abs());
      } else {
        // GraSP: Hg = ∂/∂W (∂L/∂W · g) with g fixed; keep the lowest −W ⊙ Hg (top-k of max − score).
        std::vector<at::Tensor> hg;
        for (const auto& w : weights) hg.push_back(at::zeros_like(w, w.options().requires_grad(false)));
        over_scoring_batches(data, o, comm, device, [&](const model::Batch& batch) {
          const auto grads = torch::autograd::grad({loss_of(batch)}, weights, {}, true, true, true);
          at::Tensor z;
          for (size_t t = 0; t < weights.size(); ++t) {
            if (!grads[t].defined()) continue;
            const at::Tensor term = (grads[t] * g[t]).sum();
            z = z.defined() ? z + term : term;
          }
          if (!z.defined()) return;
          const auto second = torch::autograd::grad({z}, weights, {}, false, false, true);
          for (size_t t = 0; t < weights.size(); ++t) {
            if (second[t].defined()) hg[t].add_(second[t]);
          }
        });
        sum_over_ranks(hg, comm);
        std::vector<at::Tensor> raw;
        double top = -std::numeric_limits<double>::infinity();
        for (size_t t = 0; t < weights.size(); ++t) {
          raw.push_back(-(weights[t].detach() * hg[t]));
          top = std::max(top, raw.back().max().item<double>());
        }
        for (auto& r : raw) scores.push_back(top - r);  // >= 0; the lowest raw score ranks first
      }
    } catch (...) {
      backbone.hooks().clear();
      throw;
    }
    backbone.hooks().clear();
    for (auto& s : scores) s = s.detach().to(at::kCPU, at::kFloat);
    return scores;
  }

  Mask select(const std::vector<at::Tensor>& scores, const model::ModelConfig& config) const {
    const auto tensors = pruned_tensors(config, options_);
    DT_CHECK(scores.size() == tensors.size(), "sparse_adapter: one score tensor per pruned weight");
    Mask mask;
    if (global_selection(options_.score)) {
      std::vector<std::pair<std::string, at::Tensor>> named;
      for (size_t t = 0; t < tensors.size(); ++t) named.emplace_back(tensors[t].name, scores[t]);
      mask = top_k_mask(named, TopKOptions{1.0 - options_.ratio, 0, false});
    } else {
      const std::vector<int64_t> counts = per_tensor_counts(tensors, options_);
      for (size_t t = 0; t < tensors.size(); ++t) {
        if (counts[t] == 0) continue;
        Mask one = top_k_mask({{tensors[t].name, scores[t]}}, TopKOptions{1.0, counts[t], false});
        mask.entries.push_back(std::move(one.entries.front()));
      }
    }
    mask.metadata["method"] = "sparse_adapter";
    mask.metadata["score"] = score_name(options_.score);
    return mask;
  }

  SparseAdapterOptions options_;
  DenseInit dense_;
  std::shared_ptr<Mask> mask_;
  bool stored_flat_ = false;
  std::shared_ptr<State> state_ = std::make_shared<State>();
  at::Tensor values_;
};

AdapterKind parse_adapter(const std::string& name) {
  if (name == "houlsby") return AdapterKind::Houlsby;
  if (name == "pfeiffer") return AdapterKind::Pfeiffer;
  if (name == "parallel") return AdapterKind::Parallel;
  throw_usage_error("--sparse-adapter.adapter must be houlsby, pfeiffer or parallel, got '" + name + "'");
}

PruneScore parse_score(const std::string& name) {
  for (PruneScore s : {PruneScore::Snip, PruneScore::Grasp, PruneScore::Magnitude, PruneScore::Random, PruneScore::Erk}) {
    if (name == score_name(s)) return s;
  }
  throw_usage_error("--sparse-adapter.score must be snip, grasp, magnitude, random or erk, got '" + name + "'");
}

}  // namespace

void register_sparse_adapter(peft::Registry& registry) {
  registry.add(
      {"sparse_adapter",
       "SparseAdapter: an adapter method's bottlenecks pruned at initialisation, trained as values over fixed indices",
       {
        {"sparse-adapter.adapter", std::string("houlsby"),
         "which adapters to prune: houlsby | pfeiffer | parallel (sized by that method's own options)"},
        {"sparse-adapter.ratio", double{0.8}, "fraction of the adapters' weight matrices pruned (0: dense)"},
        {"sparse-adapter.score", std::string("snip"), "pruning score: snip | grasp | magnitude | random | erk"},
        {"sparse-adapter.samples", int64_t{64}, "training examples the snip/grasp scores are computed on"},
        {"sparse-adapter.batch-size", int64_t{16}, "batch size of the scoring passes"},
        {"sparse-adapter.seed", int64_t{0}, "seed of the random and erk selections"},
       },
       [](const peft::OptionValues& values) {
         SparseAdapterOptions o;
         o.adapter = parse_adapter(values.get<std::string>("sparse-adapter.adapter"));
         switch (o.adapter) {
           case AdapterKind::Houlsby:
             o.bottleneck = values.get<int64_t>("houlsby.bottleneck");
             o.activation = peft::adapter::parse_activation("houlsby.activation",
                                                            values.get<std::string>("houlsby.activation"));
             break;
           case AdapterKind::Pfeiffer:
             o.bottleneck = values.get<int64_t>("pfeiffer.bottleneck");
             o.activation = peft::adapter::parse_activation("pfeiffer.activation",
                                                            values.get<std::string>("pfeiffer.activation"));
             break;
           case AdapterKind::Parallel:
             o.bottleneck = values.get<int64_t>("parallel_adapter.bottleneck");
             o.scale = values.get<double>("parallel_adapter.scale");
             break;
         }
         if (o.bottleneck <= 0) throw_usage_error("sparse_adapter: the adapter's bottleneck must be positive");
         o.ratio = values.get<double>("sparse-adapter.ratio");
         if (!(o.ratio >= 0.0 && o.ratio < 1.0)) {
           throw_usage_error(fmt::format("--sparse-adapter.ratio must be in [0, 1), got {}", o.ratio));
         }
         o.score = parse_score(values.get<std::string>("sparse-adapter.score"));
         o.samples = values.get<int64_t>("sparse-adapter.samples");
         o.batch_size = values.get<int64_t>("sparse-adapter.batch-size");
         if (o.samples <= 0 || o.batch_size <= 0) {
           throw_usage_error("--sparse-adapter.samples and --sparse-adapter.batch-size must be positive");
         }
         const int64_t seed = values.get<int64_t>("sparse-adapter.seed");
         if (seed < 0) throw_usage_error("--sparse-adapter.seed must be >= 0");
         o.seed = static_cast<uint64_t>(seed);
         return std::make_unique<SparseAdapter>(o);
       }});
}

}  // namespace dt::sparse
