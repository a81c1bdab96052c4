// tests/dist/test_sampler.cpp — DistributedSampler: shards, padding, equal batch counts,
// determinism, resume, and re-sharding at another world size (all ranks simulated in one process).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "dist/sampler.h"
#include "util/error.h"

namespace dt::dist {
namespace {

std::vector<DistributedSampler> world(int64_t n, int w, SamplerOptions o = {}) {
  std::vector<DistributedSampler> s;
  for (int r = 0; r < w; ++r) s.emplace_back(n, r, w, o);
  return s;
}

std::map<int64_t, int> multiplicity(const std::vector<int64_t>& v) {
  std::map<int64_t, int> m;
  for (int64_t x : v) m[x] += 1;
  return m;
}

TEST(Sampler, EngineIsTheStandardsMt19937_64) {
  // [rand.predef]: the 10000th consecutive invocation of a default-constructed std::mt19937_64
  // produces 9981545732273789042 — the premise of a portable order.
  std::mt19937_64 rng;
  rng.discard(9999);
  EXPECT_EQ(rng(), 9981545732273789042ull);
}

TEST(Sampler, BoundedDrawIsUniform) {
  std::mt19937_64 rng(7);
  int counts[3] = {0, 0, 0};
  const int draws = 300000;
  for (int i = 0; i < draws; ++i) counts[uniform_below(rng, 3)] += 1;
  for (int c : counts) EXPECT_NEAR(c, draws / 3, draws / 100);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(uniform_below(rng, 1), 0u);
}

TEST(Sampler, PermutationIsDeterministicPerSeed) {
  const auto p = portable_permutation(1000, 42);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(1000);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);
  EXPECT_NE(p, iota);
  EXPECT_EQ(p, portable_permutation(1000, 42));
  EXPECT_NE(p, portable_permutation(1000, 43));
}

TEST(Sampler, ShardsAreDisjointAndCoverTheData) {
  for (int64_t n : {1, 3, 10, 12, 101}) {
    for (int w : {1, 2, 3, 4, 7}) {
      auto ranks = world(n, w, {5, true, false});
      const int64_t per_rank = (n + w - 1) / w;
      std::vector<int64_t> all;
      for (auto& s : ranks) {
        ASSERT_EQ(s.num_samples(), per_rank);
        const auto mine = s.rank_indices(3);
        ASSERT_EQ(static_cast<int64_t>(mine.size()), per_rank);
        all.insert(all.end(), mine.begin(), mine.end());
      }
      const auto m = multiplicity(all);
      ASSERT_EQ(static_cast<int64_t>(m.size()), n) << "n=" << n << " w=" << w;  // every example
      ASSERT_EQ(static_cast<int64_t>(all.size()) - n, per_rank * w - n);  // only padding repeats
      // The padding repeats the head of the epoch's order.
      const auto order = ranks[0].epoch_order(3);
      for (int64_t i = n; i < per_rank * w; ++i) ASSERT_EQ(order[i], order[(i - n) % n]);
    }
  }
}

TEST(Sampler, DropLastCutsInsteadOfPadding) {
  auto ranks = world(10, 4, {0, true, true});
  std::vector<int64_t> all;
  for (auto& s : ranks) {
    EXPECT_EQ(s.num_samples(), 2);
    const auto mine = s.rank_indices(0);
    all.insert(all.end(), mine.begin(), mine.end());
  }
  EXPECT_EQ(multiplicity(all).size(), 8u);  // 8 distinct, none repeated
  EXPECT_THROW(DistributedSampler(3, 0, 4, {0, true, true}), Error);
}

TEST(Sampler, NoShuffleIsTheIdentityOrder) {
  DistributedSampler s(7, 1, 2, {9, false, false});
  EXPECT_EQ(s.rank_indices(0), (std::vector<int64_t>{1, 3, 5, 0}));  // padded with order[0] = 0
  EXPECT_EQ(s.rank_indices(5), s.rank_indices(0));
}

TEST(Sampler, EveryRankGetsTheSameNumberOfBatches) {
  auto ranks = world(1003, 4, {1, true, false});
  const int64_t bpe = ranks[0].batches_per_epoch(16);
  EXPECT_EQ(bpe, (251 + 15) / 16);  // 1003 -> 1004 padded, 251 per rank
  for (int64_t b = 0; b < 2 * bpe; ++b) {
    const size_t size0 = ranks[0].next_batch(16).size();
    EXPECT_EQ(size0, (b % bpe == bpe - 1) ? 251u % 16 : 16u);
    for (int r = 1; r < 4; ++r) {
      EXPECT_EQ(ranks[r].batches_per_epoch(16), bpe);
      EXPECT_EQ(ranks[r].next_batch(16).size(), size0);
    }
  }
  EXPECT_EQ(ranks[0].state().epoch, 1);
  EXPECT_EQ(ranks[0].state().position, 1004);
}

TEST(Sampler, EpochsAndSeedsGiveDifferentOrders) {
  DistributedSampler a(500, 0, 2, {11, true, false}), b(500, 0, 2, {11, true, false});
  DistributedSampler c(500, 0, 2, {12, true, false});
  EXPECT_EQ(a.rank_indices(0), b.rank_indices(0));
  EXPECT_NE(a.rank_indices(0), a.rank_indices(1));
  EXPECT_NE(a.rank_indices(0), c.rank_indices(0));
  // The order of epoch e is seeded by seed + e, as PyTorch's set_epoch.
  EXPECT_EQ(a.epoch_order(1), c.epoch_order(0));
}

TEST(Sampler, NextBatchWalksTheRankShareAcrossEpochs) {
  DistributedSampler s(10, 1, 2, {3, true, false});
  std::vector<int64_t> seen;
  for (int i = 0; i < 3; ++i) {  // 5 per rank per epoch: batches of 2, 2, 1
    auto b = s.next_batch(2);
    seen.insert(seen.end(), b.begin(), b.end());
  }
  EXPECT_EQ(seen, s.rank_indices(0));
  const auto next_epoch = s.rank_indices(1);
  EXPECT_EQ(s.next_batch(2), std::vector<int64_t>(next_epoch.begin(), next_epoch.begin() + 2));
  EXPECT_EQ(s.state().epoch, 1);
  EXPECT_EQ(s.state().position, 4);  // global units: 2 per rank × 2 ranks
}

TEST(Sampler, ResumeContinuesExactly) {
  DistributedSampler a(37, 2, 3, {8, true, false});
  for (int i = 0; i < 9; ++i) a.next_batch(4);  // 13 per rank: crosses into epoch 2
  const auto saved = a.state();
  DistributedSampler b(37, 2, 3, {8, true, false});
  b.set_state(saved);
  for (int i = 0; i < 10; ++i) ASSERT_EQ(a.next_batch(4), b.next_batch(4)) << "batch " << i;
}

// Consumes `steps` batches on every rank of a world of size w; returns all indices seen.
std::vector<int64_t> consume(std::vector<DistributedSampler>& ranks, int64_t steps, int64_t batch) {
  std::vector<int64_t> seen;
  for (int64_t s = 0; s < steps; ++s)
    for (auto& r : ranks) {
      auto b = r.next_batch(batch);
      seen.insert(seen.end(), b.begin(), b.end());
    }
  return seen;
}

TEST(Sampler, ResumeAtAnotherWorldSizeContinuesTheSameGlobalOrder) {
  const int64_t n = 100;
  const SamplerOptions o{21, true, false};
  for (int new_w : {2, 3, 5}) {
    auto before = world(n, 4, o);
    std::vector<int64_t> seen = consume(before, 5, 3);  // 4 ranks × 15 = global position 60
    const auto saved = before[0].state();
    ASSERT_EQ(saved.position, 60);
    auto after = world(n, new_w, o);
    for (auto& s : after) s.set_state(saved);
    const int64_t per_rank_left = after[0].num_samples() - 60 / new_w;
    auto rest = consume(after, per_rank_left, 1);
    ASSERT_EQ(after[0].state().position, after[0].total_size());  // the epoch is exactly used up
    seen.insert(seen.end(), rest.begin(), rest.end());
    const auto m = multiplicity(seen);
    EXPECT_EQ(static_cast<int64_t>(m.size()), n) << "new world " << new_w;  // nothing skipped
    // Repeats come only from the new world's padding.
    EXPECT_EQ(static_cast<int64_t>(seen.size()) - n, after[0].total_size() - n) << new_w;
  }
}

TEST(Sampler, ResumeAtAPositionNotDividingTheNewWorldRoundsDown) {
  auto before = world(50, 4, {2, true, false});
  std::vector<int64_t> seen = consume(before, 5, 1);  // global position 20
  DistributedSampler after(50, 0, 3, {2, true, false});
  after.set_state(before[0].state());
  EXPECT_EQ(after.state().position, 18);  // two examples will be seen again
  EXPECT_EQ(after.state().epoch, 0);
  // A position past a (smaller) re-padded epoch starts the next epoch.
  DistributedSampler big(10, 0, 4, {2, true, false});  // 12 per epoch at 4 ranks
  for (int i = 0; i < 3; ++i) big.next_batch(1);
  DistributedSampler small(10, 0, 2, {2, true, false});  // 10 per epoch at 2 ranks
  small.set_state(big.state());
  EXPECT_EQ(small.state().epoch, 1);
  EXPECT_EQ(small.state().position, 0);
}

TEST(Sampler, EvalShardsHaveNoPadding) {
  for (int w : {1, 2, 3, 4}) {
    std::vector<int64_t> all;
    for (int r = 0; r < w; ++r) {
      const auto s = shard_indices(277, r, w);
      EXPECT_LE(std::abs(static_cast<long>(s.size()) - 277 / w), 1);
      all.insert(all.end(), s.begin(), s.end());
    }
    std::sort(all.begin(), all.end());
    std::vector<int64_t> iota(277);
    std::iota(iota.begin(), iota.end(), 0);
    EXPECT_EQ(all, iota);
  }
}

}  // namespace
}  // namespace dt::dist
