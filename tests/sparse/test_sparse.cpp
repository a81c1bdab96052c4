// One-rank tests of sparse/: the index codec, top-k masks (ties included), mask files, the W +
// scatter(values) variants, the Fisher against a brute-force per-example computation, GreBsmo, and
// the closed-form plan (t5-3b in well under a second, no allocation).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <random>

#include "model/device.h"
#include "model/load.h"
#include "sparse/index_codec.h"
#include "sparse/methods.h"
#include "sparse/scatter.h"
#include "tests/mpi_test_util.h"
#include "tests/sparse/test_sparse_util.h"
#include "util/error.h"

using namespace dt;

namespace {

std::vector<int64_t> to_vec(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

std::vector<int64_t> random_sorted(int64_t count, int64_t numel, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> all;
  std::uniform_int_distribution<int64_t> pick(0, numel - 1);
  while (static_cast<int64_t>(all.size()) < count) {
    all.push_back(pick(rng));
    std::sort(all.begin(), all.end());
    all.erase(std::unique(all.begin(), all.end()), all.end());
  }
  return all;
}

}  // namespace

// ---- index codec --------------------------------------------------------------------------------------

TEST(IndexCodec, RoundTripPicksTheSmallerEncoding) {
  // Sparse: 50 of 1e6 -> deltas (gaps up to ~1e6 need 4 bytes: 18 + 200 < 18 + 125000).
  auto sparse_idx = random_sorted(50, 1000000, 1);
  auto enc = sparse::encode_indices(sparse_idx, 1000000);
  EXPECT_EQ(sparse::encoding_of(enc), sparse::IndexEncoding::Delta);
  EXPECT_EQ(static_cast<int64_t>(enc.size()), sparse::kIndexHeaderBytes + 50 * 4);
  EXPECT_EQ(static_cast<int64_t>(enc.size()), sparse::encoded_index_bytes(sparse_idx, 1000000));
  EXPECT_EQ(sparse::decode_indices(enc.data(), enc.size()), sparse_idx);
  // Dense: 40 of 64 -> bitmap (18 + 8 < 18 + 40).
  auto dense_idx = random_sorted(40, 64, 2);
  enc = sparse::encode_indices(dense_idx, 64);
  EXPECT_EQ(sparse::encoding_of(enc), sparse::IndexEncoding::Bitmap);
  EXPECT_EQ(static_cast<int64_t>(enc.size()), sparse::kIndexHeaderBytes + 8);
  int64_t numel = 0;
  EXPECT_EQ(sparse::decode_indices(enc.data(), enc.size(), &numel), dense_idx);
  EXPECT_EQ(numel, 64);
  // Both encodings of both sets decode to the same indices.
  for (const auto& [idx, n] : {std::make_pair(sparse_idx, int64_t{1000000}), std::make_pair(dense_idx, int64_t{64})}) {
    for (auto e : {sparse::IndexEncoding::Delta, sparse::IndexEncoding::Bitmap}) {
      const auto buf = sparse::encode_indices(idx, n, e);
      EXPECT_EQ(sparse::decode_indices(buf.data(), buf.size()), idx);
    }
  }
  // Narrow gaps -> 1-byte and 2-byte widths.
  std::vector<int64_t> small = {0, 3, 200, 455};
  EXPECT_EQ(static_cast<int64_t>(sparse::encode_indices(small, 1 << 20).size()), sparse::kIndexHeaderBytes + 4);
  small.push_back(455 + 300);
  EXPECT_EQ(static_cast<int64_t>(sparse::encode_indices(small, 1 << 20).size()), sparse::kIndexHeaderBytes + 10);
  // The empty set.
  enc = sparse::encode_indices({}, 10);
  EXPECT_TRUE(sparse::decode_indices(enc.data(), enc.size()).empty());
}

TEST(IndexCodec, IndicesBeyond2To31) {
  // A tensor (or a flat concatenation, T5-3B: 2.9e9) larger than 2^31 and 2^32: 8-byte gaps.
  const int64_t n = (int64_t{1} << 33) + 10;
  const std::vector<int64_t> idx = {5, (int64_t{1} << 32) + 200, (int64_t{1} << 33) + 5};  // a gap > 2^32
  const auto enc = sparse::encode_indices(idx, n);  // never builds the 1 GiB bitmap
  EXPECT_EQ(sparse::encoding_of(enc), sparse::IndexEncoding::Delta);
  EXPECT_EQ(static_cast<int64_t>(enc.size()), sparse::kIndexHeaderBytes + 3 * 8);
  EXPECT_EQ(sparse::decode_indices(enc.data(), enc.size()), idx);
  // 4-byte gaps above 2^31 (gaps < 2^32 although the indices are not).
  const std::vector<int64_t> idx4 = {(int64_t{1} << 31) + 1, (int64_t{1} << 31) + 70000, int64_t{3} << 31};
  const auto enc4 = sparse::encode_indices(idx4, int64_t{4} << 31);
  EXPECT_EQ(static_cast<int64_t>(enc4.size()), sparse::kIndexHeaderBytes + 3 * 4);
  EXPECT_EQ(sparse::decode_indices(enc4.data(), enc4.size()), idx4);
  EXPECT_EQ(sparse::index_bytes_bound(1000, int64_t{1} << 33), sparse::kIndexHeaderBytes + 1000 * 8);
}

TEST(IndexCodec, RejectsBadInput) {
  EXPECT_THROW(sparse::encode_indices({3, 3}, 10), Error);
  EXPECT_THROW(sparse::encode_indices({3, 10}, 10), Error);
  auto enc = sparse::encode_indices({1, 5, 9}, 100);
  EXPECT_THROW(sparse::decode_indices(enc.data(), enc.size() - 1), Error);
  EXPECT_THROW(sparse::decode_indices(enc.data(), 5), Error);
  auto bm = sparse::encode_indices({1, 5, 9}, 10, sparse::IndexEncoding::Bitmap);
  bm[2] = 4;  // count says 4, bitmap holds 3
  EXPECT_THROW(sparse::decode_indices(bm.data(), bm.size()), Error);
}

// Found by fuzz/index_codec.cpp: headers that lie about sizes, as a forged checkpoint can.
static std::vector<uint8_t> index_header(uint8_t encoding, uint8_t width, uint64_t count, uint64_t numel) {
  std::vector<uint8_t> h = {encoding, width};
  for (uint64_t v : {count, numel})
    for (int b = 0; b < 8; ++b) h.push_back(static_cast<uint8_t>(v >> (8 * b)));
  return h;
}

TEST(IndexCodec, RejectsHeadersThatLieAboutSizes) {
  // count 2^61 of width 8: count * width wraps to 0 = the empty payload. Before the fix the check passed
  // (or reserve(2^61) threw std::length_error, not a dt::Error) and the loop read past the buffer.
  auto lie = index_header(0, 8, uint64_t{1} << 61, (uint64_t{1} << 62) - 1);
  EXPECT_THROW(sparse::decode_indices(lie.data(), lie.size()), Error);
  // A count the payload cannot hold never sizes an allocation: 2^40 indices claimed, 8 bytes given.
  lie = index_header(0, 1, uint64_t{1} << 40, uint64_t{1} << 41);
  lie.resize(lie.size() + 8, 1);
  EXPECT_THROW(sparse::decode_indices(lie.data(), lie.size()), Error);
  // Gaps 5 then 2^64 - 3 into 100 elements: the running index wraps to 2, below the first one. Before the
  // fix it passed "index < numel and gap > 0" and decoded {5, 2}, not a sorted mask.
  auto wrap = index_header(0, 8, 2, 100);
  for (uint64_t gap : {uint64_t{5}, ~uint64_t{0} - 2})
    for (int b = 0; b < 8; ++b) wrap.push_back(static_cast<uint8_t>(gap >> (8 * b)));
  EXPECT_THROW(sparse::decode_indices(wrap.data(), wrap.size()), Error);
  // The same layout with an honest second gap decodes.
  auto honest = index_header(0, 8, 2, 100);
  for (uint64_t gap : {uint64_t{5}, uint64_t{90}})
    for (int b = 0; b < 8; ++b) honest.push_back(static_cast<uint8_t>(gap >> (8 * b)));
  EXPECT_EQ(sparse::decode_indices(honest.data(), honest.size()), (std::vector<int64_t>{5, 95}));
}

// ---- top-k ------------------------------------------------------------------------------------------

TEST(TopK, PicksExactlyTheLargestWithTiesByPosition) {
  // Scores with many ties (0, 0.5, 1, 1.5), three tensors; reference: stable sort by (-score, position).
  for (uint64_t seed : {1, 2, 3}) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    std::vector<at::Tensor> scores = {at::randint(0, 4, {7, 5}, gen, at::TensorOptions().dtype(at::kFloat)) * 0.5,
                                      at::randint(0, 4, {13}, gen, at::TensorOptions().dtype(at::kFloat)) * 0.5,
                                      at::rand({4, 4}, gen) * 2};
    std::vector<std::pair<float, int64_t>> all;
    int64_t base = 0;
    for (const auto& s : scores) {
      const at::Tensor c = s.contiguous();
      for (int64_t i = 0; i < c.numel(); ++i) all.emplace_back(c.data_ptr<float>()[i], base + i);
      base += c.numel();
    }
    std::stable_sort(all.begin(), all.end(), [](auto a, auto b) { return a.first > b.first; });
    for (int64_t k : {0, 1, 10, 17, 40, 63, 64}) {
      const auto picked = sparse::top_k_indices(scores, k);
      std::vector<int64_t> want;
      for (int64_t j = 0; j < k; ++j) want.push_back(all[j].second);
      std::sort(want.begin(), want.end());
      std::vector<int64_t> got;
      int64_t offset = 0;
      for (size_t t = 0; t < scores.size(); ++t) {
        for (int64_t i : to_vec(picked[t])) got.push_back(offset + i);
        offset += scores[t].numel();
      }
      EXPECT_EQ(got, want) << "seed " << seed << " k " << k;
    }
  }
}

TEST(TopK, CountsFromKeepAndPerTensor) {
  std::vector<std::pair<std::string, at::Tensor>> scores = {{"a", at::rand({10, 10})}, {"b", at::rand({30})},
                                                            {"c", at::rand({7})}};
  sparse::TopKOptions o;
  o.keep = 0.1;  // round(0.1 x 137) = 14
  auto mask = sparse::top_k_mask(scores, o);
  EXPECT_EQ(mask.count(), 14);
  o.per_tensor = true;  // 10 + 3 + 1
  mask = sparse::top_k_mask(scores, o);
  ASSERT_EQ(mask.entries.size(), 3u);
  EXPECT_EQ(mask.entries[0].count(), 10);
  EXPECT_EQ(mask.entries[1].count(), 3);
  EXPECT_EQ(mask.entries[2].count(), 1);
  // Per tensor, the picked entries are that tensor's largest.
  const at::Tensor a = scores[0].second.view(-1);
  const at::Tensor kth = std::get<0>(a.topk(10));
  EXPECT_TRUE(at::equal(std::get<0>(a.index_select(0, mask.entries[0].indices).sort(0, true)), kth));
  o = {};
  o.count = 5;
  EXPECT_EQ(sparse::top_k_mask(scores, o).count(), 5);
  o.count = 1000;
  EXPECT_THROW(sparse::top_k_mask(scores, o), UsageError);
  EXPECT_THROW(sparse::top_k_indices({at::tensor({1.0f, -1.0f})}, 1), Error);
}

// Streaming magnitude selection (one tensor's float32 |W| at a time) = top_k_mask over all the
// scores, bit for bit: on tiny-t5 with bf16-rounded weights (many ties across and within tensors),
// global keep / count / per-tensor, and through compute_fish_mask's magnitude branch.
TEST(TopK, StreamingMagnitudeEqualsTopKMask) {
  torch::manual_seed(7);
  auto backbone = model::make_backbone(model::named_config("tiny-t5"), 0);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : backbone->named_parameters()) p.copy_(p.to(at::kBFloat16).to(at::kFloat).round());
  }
  sparse::FishOptions fo;
  fo.select = "magnitude";
  const auto eligible = sparse::eligible_tensors(backbone->config(), fo.fisher.include, fo.fisher.exclude);
  std::map<std::string, at::Tensor> by_name;
  for (const auto& [name, t] : backbone->named_parameters()) by_name.emplace(name, t);
  std::vector<std::pair<std::string, at::Tensor>> scores;
  for (const auto& m : eligible) scores.emplace_back(m.name, by_name.at(m.name).detach().abs().to(at::kFloat));
  std::vector<sparse::TopKOptions> cases(5);
  cases[0].keep = 0.005;
  cases[1].keep = 0.3;
  cases[2].count = 1;
  cases[3].count = 777;
  cases[4].keep = 0.05;
  cases[4].per_tensor = true;
  for (const auto& o : cases) {
    const sparse::Mask want = sparse::top_k_mask(scores, o);
    int calls = 0;
    const sparse::Mask got = sparse::top_k_mask_streaming(
        eligible, [&](size_t t) { ++calls; return scores[t].second.clone(); }, o);
    EXPECT_GT(calls, 0);
    EXPECT_EQ(got.hash_hex(), want.hash_hex()) << "keep " << o.keep << " count " << o.count;
    ASSERT_EQ(got.entries.size(), want.entries.size());
    for (size_t i = 0; i < got.entries.size(); ++i) {
      EXPECT_EQ(got.entries[i].name, want.entries[i].name);
      EXPECT_TRUE(at::equal(got.entries[i].indices, want.entries[i].indices));
    }
    fo.topk = o;
    EXPECT_EQ(sparse::compute_fish_mask(*backbone, {}, 0, nullptr, fo).hash_hex(), want.hash_hex());
  }
  // Bad scores are refused as before.
  EXPECT_THROW(sparse::top_k_mask_streaming({{"a", {2}}}, [](size_t) { return at::tensor({1.0f, -1.0f}); },
                                            sparse::TopKOptions{}),
               Error);
}

TEST(MaskFile, SaveLoadHashAndShapeChecks) {
  std::vector<std::pair<std::string, at::Tensor>> scores = {{"z.weight", at::rand({6, 4})}, {"a.weight", at::rand({9})}};
  sparse::TopKOptions o;
  o.keep = 0.3;
  auto mask = sparse::top_k_mask(scores, o);
  mask.metadata["note"] = "x";
  const std::string path = ::testing::TempDir() + "/mask.safetensors";
  sparse::save_mask(mask, path);
  EXPECT_EQ(sparse::mask_file_count(path), mask.count());
  const auto loaded = sparse::load_mask(path);
  ASSERT_EQ(loaded.entries.size(), mask.entries.size());
  EXPECT_EQ(loaded.entries[0].name, "z.weight");  // the saved order, not the file's sorted keys
  EXPECT_EQ(loaded.hash(), mask.hash());
  EXPECT_EQ(loaded.metadata.at("note"), "x");
  for (size_t i = 0; i < mask.entries.size(); ++i) {
    EXPECT_TRUE(at::equal(loaded.entries[i].indices, mask.entries[i].indices));
  }
  auto other = mask;
  other.entries.pop_back();
  EXPECT_NE(other.hash(), mask.hash());
  EXPECT_THROW(sparse::check_mask_fits(mask, {{"z.weight", {4, 6}}, {"a.weight", {9}}}, path), UsageError);
  EXPECT_NO_THROW(sparse::check_mask_fits(mask, {{"z.weight", {6, 4}}, {"a.weight", {9}}}, path));
  EXPECT_THROW(sparse::load_mask(::testing::TempDir() + "/missing.safetensors"), UsageError);
}

// ---- W + scatter(values) ----------------------------------------------------------------------------

TEST(Scatter, EveryVariantGivesTheSameWeightAndGradient) {
  const at::Tensor w = at::randn({8, 12});
  const at::Tensor idx = std::get<0>(at::randperm(96).narrow(0, 0, 10).sort());
  const at::Tensor g = at::randn({8, 12});
  at::Tensor want, want_grad;
  for (auto impl : {sparse::ScatterImpl::IndexAdd, sparse::ScatterImpl::IndexPut, sparse::ScatterImpl::DenseDelta,
                    sparse::ScatterImpl::SparseCoo}) {
    at::Tensor v = at::arange(1, 11, at::kFloat).requires_grad_(true);
    const at::Tensor out = sparse::add_scattered(w, idx, v, impl);
    (out * g).sum().backward();
    if (!want.defined()) {
      want = w.clone();
      want.view(-1).index_put_({idx}, want.view(-1).index_select(0, idx) + v.detach());
      want_grad = g.reshape(-1).index_select(0, idx);
    }
    EXPECT_TRUE(at::allclose(out.detach(), want)) << sparse::scatter_impl_name(impl);
    EXPECT_TRUE(at::allclose(v.grad(), want_grad)) << sparse::scatter_impl_name(impl);
  }
}

// ---- Fisher -------------------------------------------------------------------------------------------

TEST(Fisher, EqualsBruteForcePerExampleSquaredGradients) {
  auto backbone = dt::testing::tiny_backbone();
  const auto& config = backbone->config();
  const int64_t n = 9;
  // Brute force: every backbone parameter, one example at a time, .grad() squared and summed.
  std::map<std::string, at::Tensor> want, batch_want;
  std::vector<at::Tensor> g_sum;
  for (auto& [name, p] : backbone->named_parameters()) {
    if (model::is_task_head(name)) continue;
    p.requires_grad_(true);
    want[name] = at::zeros_like(p);
    batch_want[name] = at::zeros_like(p);
  }
  std::map<std::string, at::Tensor> running;  // sum of g_i over the current batch of 4
  for (int64_t i = 0; i < n; ++i) {
    backbone->forward(dt::testing::sample_batch(config, {i})).loss.backward();
    for (auto& [name, p] : backbone->named_parameters()) {
      if (!want.count(name) || !p.grad().defined()) continue;
      want[name] += p.grad() * p.grad();
      running[name] = running.count(name) ? running[name] + p.grad() : p.grad().clone();
      p.mutable_grad().reset();
    }
    if (i % 4 == 3 || i == n - 1) {
      for (auto& [name, s] : running) batch_want[name] += s * s;
      running.clear();
    }
  }
  for (auto& [name, p] : backbone->named_parameters()) p.requires_grad_(false);

  const auto fisher = sparse::compute_fisher(*backbone, dt::testing::sample_fn(config), n, dt::testing::test_comm());
  ASSERT_EQ(fisher.size(), want.size());
  double total = 0;
  for (const auto& [name, f] : fisher) {
    EXPECT_TRUE(at::allclose(f, want.at(name), 1e-5, 1e-12)) << name;
    total += f.sum().item<double>();
  }
  EXPECT_GT(total, 0);
  // The backbone is left frozen, without gradients.
  for (const auto& [name, p] : backbone->named_parameters()) {
    EXPECT_FALSE(p.requires_grad()) << name;
    EXPECT_FALSE(p.grad().defined()) << name;
  }
  // Batch approximation: sum_b (sum_{i in b} g_i)^2, i.e. B^2 x the squared batch-mean gradient.
  sparse::FisherOptions batch;
  batch.kind = sparse::FisherKind::Batch;
  batch.batch_size = 4;
  const auto approx = sparse::compute_fisher(*backbone, dt::testing::sample_fn(config), n, dt::testing::test_comm(), batch);
  for (const auto& [name, f] : approx) EXPECT_TRUE(at::allclose(f, batch_want.at(name), 1e-4, 1e-10)) << name;
  // With B = 1 the approximation is the per-example Fisher.
  batch.batch_size = 1;
  const auto one = sparse::compute_fisher(*backbone, dt::testing::sample_fn(config), n, dt::testing::test_comm(), batch);
  for (size_t t = 0; t < one.size(); ++t) EXPECT_TRUE(at::equal(one[t].second, fisher[t].second)) << one[t].first;
}

TEST(Fisher, IncludeExcludeGlobs) {
  const auto config = model::named_config("tiny-llama");
  const auto all = sparse::eligible_tensors(config, {"*"}, {});
  EXPECT_EQ(sparse::eligible_params(config, {"*"}, {}), model::total_params(model::describe(config)));
  const auto attn = sparse::eligible_tensors(config, {"*self_attn*"}, {"*k_proj*"});
  ASSERT_FALSE(attn.empty());
  for (const auto& m : attn) {
    EXPECT_NE(m.name.find("self_attn"), std::string::npos);
    EXPECT_EQ(m.name.find("k_proj"), std::string::npos);
  }
  EXPECT_LT(attn.size(), all.size());
  EXPECT_TRUE(sparse::glob_match("*.q.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"));
  EXPECT_EQ(sparse::split_globs(" a, b ,,c"), (std::vector<std::string>{"a", "b", "c"}));
}

// ---- DSEE support -----------------------------------------------------------------------------------

TEST(Dsee, GrebsmoRecoversPlantedSparseOutliers) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const at::Tensor low = at::matmul(at::randn({40, 2}, gen), at::randn({2, 30}, gen));
  const at::Tensor planted = std::get<0>(at::randperm(1200, gen).narrow(0, 0, 12).sort());
  at::Tensor w = low.clone();
  // Outliers of +-3: smaller than the largest entries of the low-rank part, so magnitude misses some.
  const at::Tensor signs = at::randint(0, 2, {12}, gen, at::TensorOptions().dtype(at::kFloat)) * 2 - 1;
  w.view(-1).index_put_({planted}, w.view(-1).index_select(0, planted) + 3 * signs);
  EXPECT_TRUE(at::equal(sparse::grebsmo_support(w, 2, 12), planted));
  const at::Tensor mag = sparse::magnitude_support(w, 12);
  EXPECT_TRUE(at::equal(w.view(-1).index_select(0, mag).abs().min(),
                        std::get<0>(w.view(-1).abs().topk(12)).min()));
}

// ---- plan ----------------------------------------------------------------------------------------------

TEST(Plan, FishCountIsRoundKeepTimesEligibleWithoutAllocation) {
  const auto start = std::chrono::steady_clock::now();
  const auto config = model::named_config("t5-3b");
  const auto set = dt::testing::method_set("fish", {"--fish.keep", "0.005"});
  const auto metas = set.plan(config, 2);
  const auto acc = sparse::sparse_accounting(set, config);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(metas.size(), 1u);  // T5: no task head
  EXPECT_EQ(metas[0].name, "fish.values");
  EXPECT_EQ(acc.eligible_params, model::total_params(model::describe(config)));
  EXPECT_GT(acc.eligible_params, int64_t{1} << 31);
  EXPECT_LE(std::abs(static_cast<double>(metas[0].numel()) - 0.005 * acc.eligible_params), 1.0);
  EXPECT_GT(acc.index_bytes, 0);
  EXPECT_LT(acc.index_bytes, 8 * metas[0].numel());
  EXPECT_LT(seconds, 5.0);
  std::printf("t5-3b fish plan: eligible %lld, trainable %lld, index bytes %lld, %.3f s\n",
              static_cast<long long>(acc.eligible_params), static_cast<long long>(metas[0].numel()),
              static_cast<long long>(acc.index_bytes), seconds);
}

TEST(Plan, DseeShapesAndAccounting) {
  const auto config = model::named_config("t5-base");
  const auto set = dt::testing::method_set("dsee", {"--dsee.rank", "4"});
  const auto metas = set.plan(config, 2);
  // q and v of 12 encoder self-attentions + 12 decoder self- and 12 cross-attentions = 72 weights.
  ASSERT_EQ(metas.size(), 72u * 3);
  EXPECT_EQ(metas[0].shape, (std::vector<int64_t>{4, 768}));
  EXPECT_EQ(metas[1].shape, (std::vector<int64_t>{768, 4}));
  EXPECT_EQ(metas[2].shape, (std::vector<int64_t>{128}));
  const auto acc = sparse::sparse_accounting(set, config);
  EXPECT_EQ(acc.eligible_params, 72 * 768 * 768);
  EXPECT_EQ(acc.index_bytes, 72 * (sparse::kIndexHeaderBytes + 128 * 4));
}
