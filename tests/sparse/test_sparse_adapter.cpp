// SparseAdapter (sparse/sparse_adapter.cpp; issue 17 §1), at np 1, 2 and 4: closed-form kept counts
// (global top-k, per tensor, ERK); each score against a reference computed here through the dense
// adapter (SNIP: |g ⊙ W| from autograd; GraSP: −W ⊙ Hg with Hg by central finite differences;
// magnitude: |W|); masks identical on every rank; ratio 0 == the dense adapter bit for bit, through
// three SGD steps; the mask a checkpoint stores restores the same tensors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "comm/mpi.h"
#include "dist/agreement.h"
#include "peft/adapter/adapter.h"
#include "sparse/methods.h"
#include "tests/mpi_test_util.h"
#include "tests/sparse/test_sparse_util.h"
#include "util/error.h"

using namespace dt;

namespace {

constexpr int64_t kSamples = 12, kBatch = 4, kBottleneck = 4;

std::vector<std::string> args(const std::string& score, double ratio, std::vector<std::string> extra = {}) {
  // GELU: smooth, so the finite differences of the gradient (GraSP's reference) are meaningful.
  std::vector<std::string> a = {"--houlsby.bottleneck", std::to_string(kBottleneck), "--houlsby.activation", "gelu",
                                "--sparse-adapter.score", score,
                                "--sparse-adapter.ratio", std::to_string(ratio), "--sparse-adapter.samples",
                                std::to_string(kSamples), "--sparse-adapter.batch-size", std::to_string(kBatch)};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

struct Attached {
  std::unique_ptr<model::Backbone> backbone;
  peft::MethodSet set;
  std::vector<peft::Trainable> trainables;
};

// The method set attached to a fresh tiny backbone, the dense draws made from seed 5 (every run alike).
Attached attach(const std::string& model, const std::vector<std::string>& a, comm::Communicator& comm) {
  Attached out{dt::testing::tiny_backbone(model), dt::testing::method_set("sparse_adapter", a), {}};
  torch::manual_seed(5);
  if (out.set.needs_prepare()) out.set.prepare(*out.backbone, {dt::testing::sample_fn(out.backbone->config()), 40}, comm);
  out.trainables = out.set.apply(*out.backbone);
  return out;
}

// The kept flat positions of the whole adapter, in the values' order (down then up per site, row-major).
std::vector<int64_t> kept_positions(const peft::MethodSet& set, const std::vector<int64_t>& tensor_offsets,
                                    const std::vector<std::string>& tensor_names) {
  std::vector<int64_t> out;
  for (const auto& f : set.methods()[0]->fixed_indices()) {
    const auto it = std::find(tensor_names.begin(), tensor_names.end(), f.weight);
    EXPECT_NE(it, tensor_names.end()) << f.weight;
    const int64_t offset = tensor_offsets[it - tensor_names.begin()];
    const at::Tensor idx = f.indices.to(at::kLong).contiguous();
    for (int64_t i = 0; i < idx.numel(); ++i) out.push_back(offset + idx.data_ptr<int64_t>()[i]);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The k largest of `score` (ties: lower position), sorted: what sparse/mask.h's global top-k picks.
std::vector<int64_t> top_positions(const at::Tensor& score, int64_t k) {
  const at::Tensor s = score.to(at::kDouble).contiguous();
  std::vector<int64_t> order(s.numel());
  std::iota(order.begin(), order.end(), 0);
  const double* v = s.data_ptr<double>();
  std::stable_sort(order.begin(), order.end(), [v](int64_t a, int64_t b) { return v[a] > v[b]; });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

double overlap(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> both;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
  return static_cast<double>(both.size()) / static_cast<double>(std::max<size_t>(1, a.size()));
}

// The dense adapter: sparse_adapter at ratio 0 keeps every entry, so its values ARE the dense weights
// (flat, in the order above) and its forward is the dense adapter's.
struct Dense {
  Attached attached;
  at::Tensor values;
  std::vector<int64_t> offsets;
  std::vector<std::string> names;
};

Dense dense_adapter(const std::string& model) {
  Dense d{attach(model, args("magnitude", 0.0), dt::testing::test_comm()), {}, {}, {}};
  d.values = d.attached.trainables[0].tensor;
  int64_t offset = 0;
  for (const auto& f : d.attached.set.methods()[0]->fixed_indices()) {
    d.names.push_back(f.weight);
    d.offsets.push_back(offset);
    offset += f.indices.numel();
  }
  EXPECT_EQ(offset, d.values.numel());
  return d;
}

// Σ over the scoring batches (samples 0..kSamples-1 in batches of kBatch) of ∂L/∂values, one rank.
at::Tensor summed_gradient(Dense& d) {
  model::Backbone& b = *d.attached.backbone;
  b.set_training(false);
  at::Tensor g = at::zeros_like(d.values);
  for (int64_t first = 0; first < kSamples; first += kBatch) {
    std::vector<int64_t> ids;
    for (int64_t i = first; i < std::min(kSamples, first + kBatch); ++i) ids.push_back(i);
    const at::Tensor loss = b.forward(dt::testing::sample_batch(b.config(), ids)).loss;
    g += torch::autograd::grad({loss}, {d.values})[0];
  }
  return g;
}

}  // namespace

TEST(SparseAdapter, KeptCountsInClosedForm) {
  sparse::register_methods();
  const auto config = model::named_config("tiny-bert");
  const auto sites = peft::adapter::houlsby_sites(config);
  const int64_t per_tensor = kBottleneck * config.d_model, tensors = 2 * static_cast<int64_t>(sites.size());
  auto values_of = [&](const std::vector<std::string>& a) {
    return dt::testing::method_set("sparse_adapter", a).plan(config, 0).front().shape[0];
  };
  // Global (snip, grasp, magnitude): round(keep × all adapter weights); per tensor (random, erk: the
  // adapters' down and up have the same (rows + cols) / (rows · cols)): round(keep × n) in each.
  EXPECT_EQ(values_of(args("snip", 0.8)), std::llround(0.2 * tensors * per_tensor));
  EXPECT_EQ(values_of(args("magnitude", 0.9)), std::llround(0.1 * tensors * per_tensor));
  EXPECT_EQ(values_of(args("random", 0.7)), tensors * std::llround(0.3 * per_tensor));
  EXPECT_EQ(values_of(args("erk", 0.7)), tensors * std::llround(0.3 * per_tensor));
  EXPECT_EQ(values_of(args("magnitude", 0.0)), tensors * per_tensor);
  // Large-Sparse: 4x the bottleneck at 75% pruned keeps as many weights as the dense adapter.
  std::vector<std::string> large = args("magnitude", 0.75);
  large[1] = std::to_string(4 * kBottleneck);  // --houlsby.bottleneck
  EXPECT_EQ(values_of(large), tensors * per_tensor);
  // Biases stay dense: per site [m] and [d].
  const auto planned = dt::testing::method_set("sparse_adapter", args("snip", 0.8)).plan(config, 0);
  int64_t biases = 0;
  for (const auto& m : planned) biases += m.name.find(".bias") != std::string::npos && m.name.find("adapter") != std::string::npos ? m.numel() : 0;
  EXPECT_EQ(biases, static_cast<int64_t>(sites.size()) * (kBottleneck + config.d_model));
  // Bad options: exit-2 errors naming the option.
  EXPECT_THROW(dt::testing::method_set("sparse_adapter", args("snip", 1.0)), UsageError);
  EXPECT_THROW(dt::testing::method_set("sparse_adapter", args("obd", 0.5)), UsageError);
  EXPECT_THROW(dt::testing::method_set("sparse_adapter", {"--sparse-adapter.adapter", "lora"}), UsageError);
}

TEST(SparseAdapter, RatioZeroIsTheDenseAdapterBitForBit) {
  sparse::register_methods();
  for (const std::string model : {"tiny-llama", "tiny-bert"}) {
    Dense d = dense_adapter(model);
    // The dense reference: houlsby with the same weights (and zero biases, as both start).
    auto reference = dt::testing::tiny_backbone(model);
    const auto houlsby = dt::testing::method_set("houlsby", {"--houlsby.bottleneck", std::to_string(kBottleneck),
                                                             "--houlsby.activation", "gelu"})
                             .apply(*reference);
    {
      torch::NoGradGuard no_grad;
      for (const auto& t : houlsby) {
        const auto it = std::find(d.names.begin(), d.names.end(), t.name);
        if (it == d.names.end()) continue;  // biases (zero in both) and the head (same seed)
        const int64_t offset = d.offsets[it - d.names.begin()];
        t.tensor.copy_(d.values.narrow(0, offset, t.tensor.numel()).view(t.tensor.sizes()));
      }
    }
    std::vector<at::Tensor> sparse_params, dense_params;
    for (const auto& t : d.attached.trainables) sparse_params.push_back(t.tensor);
    for (const auto& t : houlsby) dense_params.push_back(t.tensor);
    const auto batch = dt::testing::sample_batch(reference->config(), {1, 2, 3});
    for (int step = 0; step < 3; ++step) {
      for (auto* pair : {&sparse_params, &dense_params}) {
        for (auto& p : *pair) p.mutable_grad() = at::Tensor();
      }
      d.attached.backbone->set_training(false);  // no dropout draws (BERT): the same function on both
      reference->set_training(false);
      const at::Tensor a = d.attached.backbone->forward(batch).loss, b = reference->forward(batch).loss;
      EXPECT_EQ(a.item<float>(), b.item<float>()) << model << " step " << step;
      a.backward();
      b.backward();
      torch::NoGradGuard no_grad;
      for (auto* pair : {&sparse_params, &dense_params}) {
        for (auto& p : *pair) {
          if (p.grad().defined()) p.sub_(p.grad(), 0.5);
        }
      }
    }
  }
}

TEST(SparseAdapter, EachScoreAgainstAReferenceComputation) {
  sparse::register_methods();
  auto& comm = dt::testing::test_comm();
  Dense d = dense_adapter("tiny-bert");
  const int64_t n = d.values.numel(), k = std::llround(0.25 * static_cast<double>(n));

  // magnitude: the k largest |W|, exactly.
  Attached magnitude = attach("tiny-bert", args("magnitude", 0.75), comm);
  EXPECT_EQ(kept_positions(magnitude.set, d.offsets, d.names), top_positions(d.values.detach().abs(), k));

  // snip: |g ⊙ W| with g summed over the scoring batches (on np > 1 sharded and all-reduced: the
  // summation order differs, so near-ties may swap; on one rank it is the same computation).
  const at::Tensor g = summed_gradient(d);
  Attached snip = attach("tiny-bert", args("snip", 0.75), comm);
  const auto snip_kept = kept_positions(snip.set, d.offsets, d.names);
  const auto snip_want = top_positions((g * d.values.detach()).abs(), k);
  if (comm.size() == 1) {
    EXPECT_EQ(snip_kept, snip_want);
  } else {
    EXPECT_GE(overlap(snip_kept, snip_want), 0.99);
  }
  EXPECT_LT(overlap(snip_kept, top_positions(d.values.detach().abs(), k)), 0.9) << "snip is not magnitude";

  // grasp: keep the lowest −W ⊙ Hg; Hg here by central finite differences of the summed gradient.
  // A step of 1e-3 in the largest entry: well above float32's noise in the gradient, small enough
  // for the central difference's O(eps²) error on a smooth (GELU) adapter.
  const double eps = 1e-3 / g.abs().max().item<double>();
  const at::Tensor v0 = d.values.detach().clone();
  at::Tensor hg;
  {
    torch::NoGradGuard no_grad;
    d.values.copy_(v0 + eps * g);
  }
  const at::Tensor plus = summed_gradient(d);
  {
    torch::NoGradGuard no_grad;
    d.values.copy_(v0 - eps * g);
  }
  const at::Tensor minus = summed_gradient(d);
  {
    torch::NoGradGuard no_grad;
    d.values.copy_(v0);
  }
  hg = (plus - minus) / (2 * eps);
  Attached grasp = attach("tiny-bert", args("grasp", 0.75), comm);
  const auto grasp_kept = kept_positions(grasp.set, d.offsets, d.names);
  const auto grasp_want = top_positions(v0 * hg, k);  // lowest −W ⊙ Hg == largest W ⊙ Hg
  EXPECT_GE(overlap(grasp_kept, grasp_want), 0.95) << "GraSP against finite differences";
  EXPECT_LT(overlap(grasp_kept, snip_kept), 0.9) << "grasp is not snip";

  // random: the same density in every tensor, a function of the seed only.
  Attached random = attach("tiny-bert", args("random", 0.75), comm);
  Attached again = attach("tiny-bert", args("random", 0.75), comm);
  Attached other = attach("tiny-bert", args("random", 0.75, {"--sparse-adapter.seed", "9"}), comm);
  EXPECT_EQ(kept_positions(random.set, d.offsets, d.names), kept_positions(again.set, d.offsets, d.names));
  EXPECT_NE(kept_positions(random.set, d.offsets, d.names), kept_positions(other.set, d.offsets, d.names));
  for (const auto& f : random.set.methods()[0]->fixed_indices()) {
    EXPECT_EQ(f.indices.numel(), std::llround(0.25 * static_cast<double>(kBottleneck * 16))) << f.weight;
  }
}

TEST(SparseAdapter, MasksAreIdenticalOnEveryRankAndRestoreFromACheckpoint) {
  sparse::register_methods();
  auto& comm = dt::testing::test_comm();
  for (const std::string score : {"snip", "grasp"}) {
    Attached a = attach("tiny-llama", args(score, 0.8), comm);
    EXPECT_TRUE(a.trainables[0].tensor.is_leaf()) << "the values are what the optimizer steps";
    // describe() carries the mask's hash: the start-up agreement of `train` compares it across ranks.
    EXPECT_NE(a.set.describe().find(",mask="), std::string::npos);
    EXPECT_NO_THROW(dist::agree_or_throw(comm, {{"method", a.set.describe()}})) << score;
    // What a checkpoint stores (encoded indices, adapter tensors flat) gives the same mask back.
    const auto encoded = sparse::encoded_indices(a.set);
    ASSERT_EQ(encoded.size(), a.set.methods()[0]->fixed_indices().size());
    auto restored_model = dt::testing::tiny_backbone("tiny-llama");
    const auto restored = dt::testing::method_set("sparse_adapter", args(score, 0.8));
    sparse::restore_indices(restored, encoded, restored_model->config());
    EXPECT_FALSE(restored.needs_prepare()) << "no scoring pass after a restore";
    const auto trainables = restored.apply(*restored_model);
    EXPECT_EQ(restored.describe(), a.set.describe());
    ASSERT_EQ(trainables.size(), a.trainables.size());
    EXPECT_EQ(trainables[0].tensor.numel(), a.trainables[0].tensor.numel());
    // Another ratio does not fit the stored mask.
    const auto wrong = dt::testing::method_set("sparse_adapter", args(score, 0.5));
    sparse::restore_indices(wrong, encoded, restored_model->config());
    auto another = dt::testing::tiny_backbone("tiny-llama");
    EXPECT_THROW(wrong.apply(*another), UsageError);
  }
}
