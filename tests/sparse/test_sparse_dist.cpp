// Distributed tests of sparse/ (np 1, 2, 4): the Fisher summed over ranks equals the one-rank Fisher
// of the same samples; FISH and DSEE trained as values over fixed indices follow dense training with
// masked gradients step by step, while GradSync's all-reduce carries only the values.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "comm/mpi.h"
#include "dist/agreement.h"
#include "dist/grad_sync.h"
#include "sparse/magnitude.h"
#include "sparse/methods.h"
#include "sparse/scatter.h"
#include "tests/mpi_test_util.h"
#include "tests/sparse/test_sparse_util.h"
#include "util/error.h"

using namespace dt;

namespace {

comm::Communicator& self_comm() {
  static auto c = comm::make_mpi_communicator(MPI_COMM_SELF);
  return *c;
}

// Every rank a different batch of 3 (rank-dependent ids), the same on every run.
model::Batch rank_batch(const model::ModelConfig& config, int step) {
  auto& comm = dt::testing::test_comm();
  const int64_t base = 100 + 3 * (step * comm.size() + comm.rank());
  return dt::testing::sample_batch(config, {base, base + 1, base + 2});
}

uint64_t allreduce_bytes() { return dt::testing::test_comm().counters(comm::Collective::AllReduce).bytes; }

void sgd(const std::vector<at::Tensor>& params, double lr) {
  torch::NoGradGuard no_grad;
  for (const auto& p : params) {
    if (p.grad().defined()) p.sub_(p.grad(), lr);
  }
}

std::map<std::string, at::Tensor> by_name(const model::Backbone& b) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [n, t] : b.named_parameters()) out.emplace(n, t);
  return out;
}

}  // namespace

TEST(FisherDist, SumOverRanksEqualsOneRankFisher) {
  auto backbone = dt::testing::tiny_backbone();
  const auto sample = dt::testing::sample_fn(backbone->config());
  for (auto kind : {sparse::FisherKind::PerSample, sparse::FisherKind::Batch}) {
    sparse::FisherOptions o;
    o.kind = kind;
    o.batch_size = 3;
    const auto dist = sparse::compute_fisher(*backbone, sample, 13, dt::testing::test_comm(), o);
    const auto local = sparse::compute_fisher(*backbone, sample, 13, self_comm(), o);
    ASSERT_EQ(dist.size(), local.size());
    for (size_t t = 0; t < dist.size(); ++t) {
      EXPECT_TRUE(at::allclose(dist[t].second, local[t].second, 1e-5, 1e-12)) << dist[t].first;
    }
    // Every rank holds the same Fisher (the all-reduce result), hence the same mask.
    sparse::TopKOptions k;
    k.keep = 0.02;
    const auto mask = sparse::top_k_mask(dist, k);
    dist::agree_or_throw(dt::testing::test_comm(), {{"mask", mask.hash_hex()}});
    EXPECT_EQ(mask.hash(), sparse::top_k_mask(local, k).hash());
  }
}

// Sharded (sparse/fisher.h): each rank keeps only the tensors its share of the top-k reads, the
// squares summed over ranks after every round. One round (a sample per rank): bit for bit the
// unsharded Fisher where kept, so the same mask; more rounds: equal up to the summation order.
// Gradients taken a tensor at a time (grad_group_bytes 1) change nothing.
TEST(FisherDist, ShardedFisherKeepsTheTopKShareAndSelectsTheSameMask) {
  auto& comm = dt::testing::test_comm();
  auto backbone = dt::testing::tiny_backbone();
  const auto sample = dt::testing::sample_fn(backbone->config());
  for (bool per_tensor : {false, true}) {
    sparse::FisherOptions off;
    off.shard = sparse::FisherShard::Off;
    sparse::FisherOptions on = off;
    on.shard = sparse::FisherShard::On;
    on.per_tensor_top_k = per_tensor;
    on.grad_group_bytes = 1;
    EXPECT_EQ(sparse::fisher_is_sharded(backbone->config(), comm, on), comm.size() > 1);
    EXPECT_FALSE(sparse::fisher_is_sharded(backbone->config(), comm, off));
    const int64_t one_round = comm.size();
    const auto full = sparse::compute_fisher(*backbone, sample, one_round, comm, off);
    const auto shard = sparse::compute_fisher(*backbone, sample, one_round, comm, on);
    std::vector<model::TensorMeta> metas;
    for (const auto& [name, f] : full) metas.push_back({name, f.sizes().vec()});
    const auto kept = sparse::tensors_read_by(metas, per_tensor, comm.rank(), comm.size());
    int64_t kept_elements = 0, all_elements = 0;
    ASSERT_EQ(shard.size(), full.size());
    for (size_t t = 0; t < full.size(); ++t) {
      ASSERT_EQ(shard[t].first, full[t].first);
      ASSERT_EQ(shard[t].second.sizes(), full[t].second.sizes());
      all_elements += full[t].second.numel();
      if (kept[t] || comm.size() == 1) {
        EXPECT_TRUE(at::equal(shard[t].second, full[t].second)) << full[t].first;
        kept_elements += full[t].second.numel();
      } else {
        EXPECT_EQ(shard[t].second.stride(0), 0) << full[t].first << ": a tensor this rank does not read has storage";
      }
    }
    if (comm.size() > 1) {
      EXPECT_LT(kept_elements, all_elements);
    }
    sparse::TopKOptions k;
    k.keep = 0.02;
    k.per_tensor = per_tensor;
    const auto reference = sparse::top_k_mask(full, k);
    const auto sharded_mask = sparse::top_k_magnitude(shard, k, &comm, sparse::TopKKey::Score);
    EXPECT_EQ(sharded_mask.hash(), reference.hash()) << "per_tensor " << per_tensor;

    // Several rounds of batches (13 samples in batches of 3) and a rank without a batch in the last.
    off.kind = on.kind = sparse::FisherKind::Batch;
    off.batch_size = on.batch_size = 3;
    const auto full13 = sparse::compute_fisher(*backbone, sample, 13, comm, off);
    const auto shard13 = sparse::compute_fisher(*backbone, sample, 13, comm, on);
    for (size_t t = 0; t < full13.size(); ++t) {
      if (!kept[t] && comm.size() > 1) continue;
      EXPECT_TRUE(at::allclose(shard13[t].second, full13[t].second, 1e-5, 1e-12)) << full13[t].first;
    }
  }
  // Gradients a tensor at a time, unsharded: the same bits as one backward for all.
  sparse::FisherOptions grouped;
  grouped.shard = sparse::FisherShard::Off;
  grouped.grad_group_bytes = 1;
  const auto a = sparse::compute_fisher(*backbone, sample, 5, comm, grouped);
  grouped.grad_group_bytes = int64_t{1} << 40;
  const auto b = sparse::compute_fisher(*backbone, sample, 5, comm, grouped);
  for (size_t t = 0; t < a.size(); ++t) EXPECT_TRUE(at::equal(a[t].second, b[t].second)) << a[t].first;
  // Auto: sharded over more than one MPI rank once the float32 Fisher exceeds the threshold.
  sparse::FisherOptions automatic;
  EXPECT_FALSE(sparse::fisher_is_sharded(backbone->config(), comm, automatic));  // a tiny model
  automatic.shard_above_bytes = 0;
  EXPECT_EQ(sparse::fisher_is_sharded(backbone->config(), comm, automatic), comm.size() > 1);
}

TEST(FishDist, ValuesOnlyTrainingEqualsDenseMaskedTraining) {
  auto& comm = dt::testing::test_comm();
  // ---- values over fixed indices: the Fisher mask computed before attach (train.cpp's path)
  auto sparse_model = dt::testing::tiny_backbone();
  const auto& config = sparse_model->config();
  const auto set = dt::testing::method_set("fish", {"--fish.keep", "0.02", "--fish.samples", "16"});
  ASSERT_TRUE(set.needs_prepare());
  set.prepare(*sparse_model, {dt::testing::sample_fn(config), 40}, comm);
  EXPECT_FALSE(set.needs_prepare());
  const auto trainables = set.apply(*sparse_model);
  dist::agree_or_throw(comm, {{"method", set.describe()}});  // carries the mask hash
  const auto* fish = dynamic_cast<const sparse::FishMethod*>(set.methods()[0].get());
  const sparse::Mask& mask = *fish->mask();
  const int64_t k = std::llround(0.02 * sparse::eligible_params(config, {"*"}, {}));
  ASSERT_EQ(mask.count(), k);
  ASSERT_EQ(trainables.size(), 2u);  // fish.values [k], score.weight
  EXPECT_EQ(trainables[0].name, "fish.values");
  EXPECT_EQ(trainables[0].tensor.numel(), k);
  std::vector<std::pair<std::string, at::Tensor>> named;
  std::vector<at::Tensor> params;
  int64_t trainable_numel = 0;
  for (const auto& t : trainables) {
    named.emplace_back(t.name, t.tensor);
    params.push_back(t.tensor);
    trainable_numel += t.tensor.numel();
  }
  dist::GradSync sync(comm, named);

  // ---- the dense reference: every masked tensor trains densely, its gradient masked
  auto dense_model = dt::testing::tiny_backbone();
  auto dense_params = by_name(*dense_model);
  std::vector<std::pair<std::string, at::Tensor>> dense_named;
  std::vector<at::Tensor> dense_list, masks;
  for (const auto& e : mask.entries) {
    at::Tensor p = dense_params.at(e.name);
    p.requires_grad_(true);
    dense_named.emplace_back(e.name, p);
    dense_list.push_back(p);
    masks.push_back(at::zeros({p.numel()}).index_fill_(0, e.indices, 1.0).view(p.sizes()));
  }
  dense_named.emplace_back("score.weight", dense_params.at("score.weight").requires_grad_(true));
  dense_list.push_back(dense_params.at("score.weight"));
  masks.push_back(at::ones_like(dense_params.at("score.weight")));
  dist::GradSync dense_sync(comm, dense_named);

  const double lr = 0.5;
  for (int step = 0; step < 5; ++step) {
    const auto batch = rank_batch(config, step);
    const uint64_t before = allreduce_bytes();
    const at::Tensor loss = sparse_model->forward(batch).loss;
    loss.backward();
    sync.finish();
    // Only the k values (and the 2 x 64 head) went on the wire.
    EXPECT_EQ(allreduce_bytes() - before, static_cast<uint64_t>(4 * trainable_numel)) << "step " << step;
    sgd(params, lr);
    sync.zero_grad();

    const at::Tensor dense_loss = dense_model->forward(batch).loss;
    dense_loss.backward();
    dense_sync.finish();
    for (size_t i = 0; i < dense_list.size(); ++i) dense_list[i].mutable_grad().mul_(masks[i]);
    sgd(dense_list, lr);
    dense_sync.zero_grad();
    EXPECT_NEAR(loss.item<double>(), dense_loss.item<double>(), 1e-5) << "step " << step;
  }
  // Same effective weights: W + scatter(values) == the dense weights; unmasked entries unchanged.
  torch::NoGradGuard no_grad;
  auto sparse_params = by_name(*sparse_model);
  for (size_t i = 0; i < mask.entries.size(); ++i) {
    const auto& e = mask.entries[i];
    const at::Tensor eff = sparse_model->hooks().weight(e.name, sparse_params.at(e.name));
    EXPECT_TRUE(at::allclose(eff, dense_list[i], 1e-5, 1e-6)) << e.name;
    EXPECT_TRUE(at::equal(eff * (1 - masks[i]), sparse_params.at(e.name) * (1 - masks[i]))) << e.name;
  }
  EXPECT_GT(trainables[0].tensor.abs().sum().item<double>(), 0);
}

TEST(DseeDist, ValuesOnlyTrainingEqualsDenseReference) {
  auto& comm = dt::testing::test_comm();
  auto sparse_model = dt::testing::tiny_backbone();
  const auto& config = sparse_model->config();
  const auto set = dt::testing::method_set("dsee", {"--dsee.rank", "2", "--dsee.sparse", "16", "--dsee.alpha", "4"});
  torch::manual_seed(3);
  const auto trainables = set.apply(*sparse_model);
  dist::agree_or_throw(comm, {{"method", set.describe()}});
  const auto& support = dynamic_cast<const sparse::DseeMethod*>(set.methods()[0].get())->support();
  std::vector<std::pair<std::string, at::Tensor>> named;
  std::vector<at::Tensor> params;
  int64_t numel = 0, s_numel = 0;
  for (const auto& t : trainables) {
    named.emplace_back(t.name, t.tensor);
    params.push_back(t.tensor);
    numel += t.tensor.numel();
    if (t.name.find("dsee_S") != std::string::npos) s_numel += t.tensor.numel();
  }
  EXPECT_EQ(s_numel, 16 * static_cast<int64_t>(support.entries.size()));
  dist::GradSync sync(comm, named);

  // Dense reference (the DSEE code's form): S a dense [out, in] trainable whose gradient is masked.
  auto dense_model = dt::testing::tiny_backbone();
  const double scale = 4.0 / 2.0;
  std::vector<std::pair<std::string, at::Tensor>> dense_named;
  std::vector<at::Tensor> dense_list, dense_masks;
  std::map<std::string, at::Tensor> tr;
  for (const auto& t : trainables) tr[t.name] = t.tensor;
  for (const auto& e : support.entries) {
    const std::string m = e.name.substr(0, e.name.rfind(".weight"));
    at::Tensor a = tr.at(m + ".dsee_A.weight").detach().clone().requires_grad_(true);
    at::Tensor b = tr.at(m + ".dsee_B.weight").detach().clone().requires_grad_(true);
    at::Tensor s = at::zeros(e.shape).requires_grad_(true);
    dense_model->hooks().set_weight(e.name, [a, b, s, scale](const at::Tensor& w) {
      return w + (at::matmul(b, a) + s) * scale;
    });
    for (auto& [suffix, t, msk] : std::vector<std::tuple<std::string, at::Tensor, at::Tensor>>{
             {".dsee_A.weight", a, at::ones_like(a)},
             {".dsee_B.weight", b, at::ones_like(b)},
             {".dsee_S.dense", s, at::zeros({s.numel()}).index_fill_(0, e.indices, 1.0).view(s.sizes())}}) {
      dense_named.emplace_back(m + suffix, t);
      dense_list.push_back(t);
      dense_masks.push_back(msk);
    }
  }
  at::Tensor head = by_name(*dense_model).at("score.weight").requires_grad_(true);
  dense_named.emplace_back("score.weight", head);
  dense_list.push_back(head);
  dense_masks.push_back(at::ones_like(head));
  dist::GradSync dense_sync(comm, dense_named);

  for (int step = 0; step < 5; ++step) {
    const auto batch = rank_batch(config, step);
    const uint64_t before = allreduce_bytes();
    const at::Tensor loss = sparse_model->forward(batch).loss;
    loss.backward();
    sync.finish();
    EXPECT_EQ(allreduce_bytes() - before, static_cast<uint64_t>(4 * numel)) << "step " << step;
    sgd(params, 0.5);
    sync.zero_grad();
    const at::Tensor dense_loss = dense_model->forward(batch).loss;
    dense_loss.backward();
    dense_sync.finish();
    for (size_t i = 0; i < dense_list.size(); ++i) dense_list[i].mutable_grad().mul_(dense_masks[i]);
    sgd(dense_list, 0.5);
    dense_sync.zero_grad();
    EXPECT_NEAR(loss.item<double>(), dense_loss.item<double>(), 1e-5) << "step " << step;
  }
  torch::NoGradGuard no_grad;
  auto sp = by_name(*sparse_model);
  auto dp = by_name(*dense_model);
  for (const auto& e : support.entries) {
    const at::Tensor a = sparse_model->hooks().weight(e.name, sp.at(e.name));
    const at::Tensor b = dense_model->hooks().weight(e.name, dp.at(e.name));
    EXPECT_TRUE(at::allclose(a, b, 1e-5, 1e-6)) << e.name;
    EXPECT_FALSE(at::equal(a, sp.at(e.name))) << e.name << " did not train";
  }
}

TEST(FishDist, RanksHoldingDifferentMasksFailTheStartUpAgreement) {
  auto& comm = dt::testing::test_comm();
  if (comm.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto model = dt::testing::tiny_backbone();
  // Same options everywhere; the masks differ (magnitude on rank 0, random elsewhere), as a stale
  // mask file on one node would. describe() carries the mask hash into train's agreement item.
  const auto set = dt::testing::method_set("fish", {"--fish.select", "magnitude", "--fish.keep", "0.02"});
  auto* fish = dynamic_cast<sparse::FishMethod*>(set.methods()[0].get());
  sparse::FishOptions other = fish->options();
  other.select = comm.rank() == 0 ? "magnitude" : "random";
  fish->set_mask(sparse::compute_fish_mask(*model, {}, 0, nullptr, other));
  set.apply(*model);
  try {
    dist::agree_or_throw(comm, {{"method", set.describe()}});
    ADD_FAILURE() << "different masks passed the agreement";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'method'"), std::string::npos) << what;
    EXPECT_NE(what.find("rank"), std::string::npos) << what;
  }
}

// --fish.refresh-every: the refreshed mask is the top-k of the Fisher of the current model (the
// same on every rank); values at indices both masks hold carry over exactly, new ones start at 0,
// and the trainable tensor keeps its size (so GradSync's buckets stay valid).
TEST(FishDist, RefreshMovesTheMaskAndCarriesKeptValues) {
  auto& comm = dt::testing::test_comm();
  auto model = dt::testing::tiny_backbone();
  const auto& config = model->config();
  const auto set = dt::testing::method_set(
      "fish", {"--fish.keep", "0.02", "--fish.samples", "16", "--fish.refresh-every", "1"});
  set.prepare(*model, {dt::testing::sample_fn(config), 40}, comm);
  EXPECT_TRUE(set.refreshes_indices());
  const auto trainables = set.apply(*model);
  auto* fish = dynamic_cast<sparse::FishMethod*>(set.methods()[0].get());
  const at::Tensor values = trainables[0].tensor;
  {
    torch::NoGradGuard no_grad;
    values.copy_(at::arange(1, values.numel() + 1, at::kFloat) * 1e-4);  // distinct, non-zero, small
  }
  const sparse::Mask before = *fish->mask();
  auto value_at = [](const sparse::Mask& mask, const at::Tensor& v) {
    std::map<std::pair<std::string, int64_t>, float> out;
    int64_t offset = 0;
    for (const auto& e : mask.entries) {
      for (int64_t i = 0; i < e.count(); ++i) out[{e.name, e.indices[i].item<int64_t>()}] = v[offset + i].item<float>();
      offset += e.count();
    }
    return out;
  };
  const auto old_values = value_at(before, values.detach());
  // Other samples than the first mask's, so the new Fisher differs.
  const auto base = dt::testing::sample_fn(config);
  const sparse::SampleFn shifted = [&base](const std::vector<int64_t>& ids) {
    std::vector<int64_t> moved;
    for (int64_t i : ids) moved.push_back(i + 1000);
    return base(moved);
  };
  const sparse::Mask expected = sparse::compute_fish_mask(*model, shifted, 40, &comm, fish->options());
  const peft::IndexRefresh refreshed = set.methods()[0]->refresh(*model, {shifted, 40}, comm);
  EXPECT_EQ(refreshed.trainable, "fish.values");
  const std::vector<int64_t>& carry = refreshed.carry;
  const sparse::Mask& after = *fish->mask();
  EXPECT_EQ(after.hash(), expected.hash());
  EXPECT_NE(after.hash(), before.hash());
  EXPECT_EQ(after.count(), before.count());
  EXPECT_EQ(values.numel(), before.count());
  dist::agree_or_throw(comm, {{"refreshed mask", after.hash_hex()}});

  int64_t kept = 0, fresh = 0;
  for (const auto& [key, v] : value_at(after, values.detach())) {
    auto it = old_values.find(key);
    if (it != old_values.end()) {
      EXPECT_EQ(v, it->second) << key.first << "[" << key.second << "]";
      ++kept;
    } else {
      EXPECT_EQ(v, 0.0f) << key.first << "[" << key.second << "]";
      ++fresh;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(fresh, 0);
  int64_t carried = 0;
  for (int64_t c : carry) carried += c >= 0;
  EXPECT_EQ(carried, kept);
  // The hooks follow the new layout: the effective weight is W + the new values at the new indices.
  torch::NoGradGuard no_grad;
  auto params = by_name(*model);
  int64_t offset = 0;
  for (const auto& e : after.entries) {
    const at::Tensor w = params.at(e.name);
    const at::Tensor want = w.reshape(-1).index_add(0, e.indices, values.narrow(0, offset, e.count())).view(w.sizes());
    EXPECT_TRUE(at::equal(model->hooks().weight(e.name, w), want)) << e.name;
    offset += e.count();
  }
  for (const auto& e : before.entries) {
    if (!after.find(e.name)) {
      EXPECT_TRUE(at::equal(model->hooks().weight(e.name, params.at(e.name)), params.at(e.name)));
    }
  }
}

// merge() folds the values into the frozen weights (the forward is unchanged, the hooks pass
// through); unmerge() restores the weights.
TEST(FishDist, MergeKeepsTheForwardAndUnmergeRestoresTheWeights) {
  auto model = dt::testing::tiny_backbone();
  const auto& config = model->config();
  const auto set = dt::testing::method_set("fish", {"--fish.keep", "0.05", "--fish.select", "magnitude"});
  const auto trainables = set.apply(*model);
  {
    torch::NoGradGuard no_grad;
    trainables[0].tensor.normal_(0.0, 0.1);
  }
  const auto batch = dt::testing::sample_batch(config, {1, 2, 3});
  torch::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> original;
  for (const auto& [n, t] : model->named_parameters()) original[n] = t.clone();
  const at::Tensor hooked = model->forward(batch).logits;
  ASSERT_TRUE(set.can_merge());
  set.merge(*model);
  EXPECT_LT((model->forward(batch).logits - hooked).abs().max().item<double>(), 1e-5);
  int64_t changed = 0;
  for (const auto& [n, t] : model->named_parameters()) changed += !at::equal(t, original[n]);
  EXPECT_GT(changed, 0);
  set.unmerge(*model);
  EXPECT_LT((model->forward(batch).logits - hooked).abs().max().item<double>(), 1e-5);
  for (const auto& [n, t] : model->named_parameters()) {
    EXPECT_LT((t - original[n]).abs().max().item<double>(), 1e-6) << n;
  }
}
