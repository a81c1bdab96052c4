// top_k_magnitude (sparse/magnitude.h) against top_k_mask on float32 |W|, bit for bit, at np 1, 2, 4:
// bf16, float32 and mixed tensor lists with many ties (values from a small set, ties straddling the
// rank split and the bf16 / float32 boundary), global keep / count / per-tensor, scores (Fisher-like),
// other dtypes and layouts, refusals raised on every rank, and FISH's magnitude selection.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "dist/agreement.h"
#include "model/load.h"
#include "model/parameter_map.h"
#include "sparse/magnitude.h"
#include "sparse/methods.h"
#include "tests/mpi_test_util.h"
#include "tests/sparse/test_sparse_util.h"
#include "util/error.h"

using namespace dt;

namespace {

using Named = std::vector<std::pair<std::string, at::Tensor>>;

// What top_k_magnitude must equal: the float32 |x| of every tensor through top_k_mask.
sparse::Mask reference(const Named& tensors, const sparse::TopKOptions& o) {
  Named scores;
  for (const auto& [name, t] : tensors) scores.emplace_back(name, t.abs().to(at::kFloat));
  return sparse::top_k_mask(scores, o);
}

void expect_same(const sparse::Mask& got, const sparse::Mask& want, const std::string& what) {
  EXPECT_EQ(got.hash_hex(), want.hash_hex()) << what;
  ASSERT_EQ(got.entries.size(), want.entries.size()) << what;
  for (size_t i = 0; i < got.entries.size(); ++i) {
    EXPECT_EQ(got.entries[i].name, want.entries[i].name) << what;
    EXPECT_EQ(got.entries[i].shape, want.entries[i].shape) << what;
    EXPECT_TRUE(at::equal(got.entries[i].indices, want.entries[i].indices)) << what << " " << got.entries[i].name;
  }
}

// Values drawn from a small set (signs and -0.0 included): nearly every entry ties with thousands.
at::Tensor few_values(std::vector<int64_t> shape, at::ScalarType dtype, int64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor set = at::tensor({0.0f, -0.0f, 0.5f, -0.5f, 1.0f, -1.0f, 2.0f, 3.0f, -3.0f, 0.25f});
  return set.index_select(0, at::randint(0, set.numel(), shape, gen, at::kLong).view(-1)).view(shape).to(dtype);
}

// Values near 1 that differ only in their low 16 float32 bits (the low-half pass decides), plus ties.
at::Tensor low_bits(std::vector<int64_t> shape, int64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return 1.0f + at::randint(0, 40, shape, gen, at::kLong).to(at::kFloat) * std::ldexp(1.0f, -20);
}

std::vector<sparse::TopKOptions> all_options(int64_t total) {
  std::vector<sparse::TopKOptions> cases;
  for (double keep : {0.005, 0.05, 0.3, 0.5, 0.97, 1.0}) {
    sparse::TopKOptions o;
    o.keep = keep;
    cases.push_back(o);
    o.per_tensor = true;
    cases.push_back(o);
  }
  for (int64_t count : {int64_t{1}, int64_t{2}, int64_t{777}, total - 1, total}) {
    sparse::TopKOptions o;
    o.count = count;
    cases.push_back(o);
  }
  return cases;
}

void check_all(const Named& tensors, const std::string& what) {
  auto& comm = dt::testing::test_comm();
  int64_t total = 0;
  for (const auto& [n, t] : tensors) total += t.numel();
  for (const auto& o : all_options(total)) {
    const std::string label = what + fmt::format(" keep {} count {} per_tensor {}", o.keep, o.count, o.per_tensor);
    const sparse::Mask want = reference(tensors, o);
    expect_same(sparse::top_k_magnitude(tensors, o, &comm), want, label + " (comm)");
    expect_same(sparse::top_k_magnitude(tensors, o, nullptr), want, label + " (alone)");
    dist::agree_or_throw(comm, {{"mask", want.hash_hex()}});
  }
}

}  // namespace

TEST(MagnitudeTopK, Bf16FewValuesEqualsTopKMask) {
  // Sizes that do not divide by 2 or 4, so the rank ranges cut tensors mid-way; an empty tensor.
  check_all({{"a", few_values({37, 11}, at::kBFloat16, 1)},
             {"b", few_values({1001}, at::kBFloat16, 2)},
             {"empty", at::zeros({0, 5}, at::kBFloat16)},
             {"c", few_values({3, 5, 7}, at::kBFloat16, 3)},
             {"d", few_values({2000}, at::kBFloat16, 4)}},
            "bf16");
}

TEST(MagnitudeTopK, Float32FewValuesAndLowBitsEqualsTopKMask) {
  check_all({{"a", few_values({37, 11}, at::kFloat, 5)},
             {"b", low_bits({1001}, 6)},
             {"c", few_values({301}, at::kFloat, 7)},
             {"d", low_bits({17, 41}, 8)}},
            "fp32");
}

TEST(MagnitudeTopK, MixedDtypesTieAcrossTheBf16Float32Boundary) {
  // 1.0, 0.5, ... are exact in both: a threshold key shared by bf16 and float32 tensors, ties taken in
  // tensor order whatever the dtype; low_bits puts float32 keys inside 1.0's bf16 bucket.
  check_all({{"a", few_values({513}, at::kBFloat16, 9)},
             {"b", low_bits({257}, 10)},
             {"c", few_values({29, 31}, at::kFloat, 11)},
             {"d", few_values({777}, at::kBFloat16, 12)},
             {"e", at::ones({100}, at::kFloat)}},
            "mixed");
}

TEST(MagnitudeTopK, NormalBf16WeightsEqualsTopKMask) {
  torch::manual_seed(13);
  check_all({{"shared.weight", at::randn({300, 64}).to(at::kBFloat16)},
             {"q.weight", (at::randn({64, 64}) * 0.125).to(at::kBFloat16)},
             {"wi.weight", (at::randn({256, 64}) * 0.125).to(at::kBFloat16)},
             {"layer_norm.weight", at::ones({64}, at::kBFloat16)}},
            "normal bf16");
}

TEST(MagnitudeTopK, OtherDtypesAndLayouts) {
  // float16 / float64 / transposed / CPU copies go through a float32 copy: still the same mask.
  check_all({{"half", few_values({333}, at::kHalf, 14)},
             {"double", low_bits({211}, 15).to(at::kDouble)},
             {"t", few_values({40, 30}, at::kBFloat16, 16).t()},
             {"t32", low_bits({23, 19}, 17).t()}},
            "dtypes");
}

TEST(MagnitudeTopK, ScoresEqualTopKMaskOnTheScores) {
  auto& comm = dt::testing::test_comm();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(18);
  Named scores = {{"a", at::rand({501}, gen)},
                  {"b", at::rand({33, 7}, gen).mul(8).floor()},  // ties
                  {"c", -at::zeros({64})}};                     // -0.0: allowed, equal to 0
  for (const auto& o : all_options(501 + 231 + 64)) {
    expect_same(sparse::top_k_magnitude(scores, o, &comm, sparse::TopKKey::Score), sparse::top_k_mask(scores, o),
                fmt::format("scores keep {} count {} per_tensor {}", o.keep, o.count, o.per_tensor));
  }
}

TEST(MagnitudeTopK, RefusalsAreRaisedOnEveryRankNamingTheTensor) {
  auto& comm = dt::testing::test_comm();
  // The bad value sits in the last tensor: with 2 or 4 ranks only the last rank reads it.
  for (bool per_tensor : {false, true}) {
    sparse::TopKOptions o;
    o.keep = 0.1;
    o.per_tensor = per_tensor;
    for (float bad : {NAN, INFINITY, -INFINITY}) {
      for (auto dtype : {at::kBFloat16, at::kFloat}) {
        at::Tensor last = at::ones({400}, dtype);
        last[399] = bad;
        const Named w = {{"first", at::ones({400}, dtype)}, {"last.weight", last}};
        try {
          sparse::top_k_magnitude(w, o, &comm);
          ADD_FAILURE() << "no error for " << bad;
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("'last.weight' holds NaN or infinite"), std::string::npos) << e.what();
        }
      }
    }
    for (float neg : {-1.0f, -1e-45f}) {  // a negative score; a negative float32 subnormal
      at::Tensor last = at::rand({400});
      last[399] = neg;
      const Named s = {{"first", at::rand({400})}, {"last", last}};
      EXPECT_THROW(sparse::top_k_magnitude(s, o, &comm, sparse::TopKKey::Score), Error);
      // As magnitudes the same values are fine.
      expect_same(sparse::top_k_magnitude(s, o, &comm), reference(s, o), "negative as magnitude");
    }
  }
  sparse::TopKOptions o;
  o.count = 10000;
  EXPECT_THROW(sparse::top_k_magnitude({{"a", at::ones({5})}}, o, &comm), UsageError);
}

TEST(MagnitudeTopK, FishMagnitudeSelectionSplitAcrossRanks) {
  auto& comm = dt::testing::test_comm();
  torch::manual_seed(19);
  auto backbone = model::make_backbone(model::named_config("tiny-t5"), 0);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : backbone->named_parameters()) p.copy_(p.to(at::kBFloat16).to(at::kFloat).round());
  }
  sparse::FishOptions fo;
  fo.select = "magnitude";
  for (double keep : {0.005, 0.2}) {
    fo.topk.keep = keep;
    const auto eligible = sparse::eligible_tensors(backbone->config(), fo.fisher.include, fo.fisher.exclude);
    const auto by_name = model::parameters_by_name(*backbone);
    Named w;
    for (const auto& m : eligible) w.emplace_back(m.name, by_name.at(m.name).detach());
    const sparse::Mask want = reference(w, fo.topk);
    const sparse::Mask split = sparse::compute_fish_mask(*backbone, {}, 0, &comm, fo);
    const sparse::Mask alone = sparse::compute_fish_mask(*backbone, {}, 0, nullptr, fo);
    EXPECT_EQ(split.hash_hex(), want.hash_hex());
    EXPECT_EQ(alone.hash_hex(), want.hash_hex());
    dist::agree_or_throw(comm, {{"mask", split.hash_hex()}});
  }
}

// train's path (MethodSet::prepare before apply): FISH asks for prepare() with magnitude and random
// selections too, whose top-k prepare splits across the ranks, and the mask is the one attach() alone
// selects over the whole backbone (describe() carries its hash).
TEST(MagnitudeTopK, FishPrepareSplitsMagnitudeAndRandomSelections) {
  auto& comm = dt::testing::test_comm();
  for (const std::string select : {"magnitude", "random"}) {
    const std::vector<std::string> args = {"--fish.select", select, "--fish.keep", "0.02", "--fish.seed", "5"};
    auto prepared_model = dt::testing::tiny_backbone();
    const auto prepared = dt::testing::method_set("fish", args);
    ASSERT_TRUE(prepared.needs_prepare()) << select;
    prepared.prepare(*prepared_model, {dt::testing::sample_fn(prepared_model->config()), 0}, comm);
    EXPECT_FALSE(prepared.needs_prepare()) << select;
    const auto trainables = prepared.apply(*prepared_model);
    ASSERT_EQ(trainables[0].name, "fish.values");
    EXPECT_EQ(trainables[0].tensor.numel(),
              std::llround(0.02 * sparse::eligible_params(prepared_model->config(), {"*"}, {})));

    auto alone_model = dt::testing::tiny_backbone();
    const auto alone = dt::testing::method_set("fish", args);
    alone.apply(*alone_model);
    EXPECT_EQ(prepared.describe(), alone.describe()) << select;
    EXPECT_NE(prepared.describe().find("hash"), std::string::npos) << prepared.describe();
    dist::agree_or_throw(comm, {{"method", prepared.describe()}});
  }
}
