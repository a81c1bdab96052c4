// assign_buckets on its own: a table of cases, each with the exact expected buckets.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "dist/bucket.h"
#include "util/error.h"

namespace dt::dist {
namespace {

constexpr size_t KiB = 1024;

TensorSpec f32(const std::string& name, int64_t numel) {
  return {name, numel, 4, c10::ScalarType::Float};
}
TensorSpec f16(const std::string& name, int64_t numel) {
  return {name, numel, 2, c10::ScalarType::Half};
}

struct Expected {
  std::vector<size_t> tensors;
  std::vector<int64_t> offsets;
  c10::ScalarType dtype = c10::ScalarType::Float;
};

struct Case {
  const char* name;
  std::vector<TensorSpec> tensors;
  size_t first_cap;
  size_t cap;
  std::vector<Expected> buckets;
};

std::vector<Case> cases() {
  using c10::ScalarType;
  return {
      {"empty", {}, 1 * KiB, 4 * KiB, {}},
      {"one tensor under the cap", {f32("w", 10)}, 1 * KiB, 4 * KiB, {{{0}, {0}}}},
      // Reverse registration order: the last registered tensor sits first in the first bucket.
      {"reverse order, all fit the first bucket",
       {f32("a", 10), f32("b", 20), f32("c", 30)},
       1 * KiB,
       4 * KiB,
       {{{2, 1, 0}, {0, 30, 50}}}},
      // 256 floats = exactly 1 KiB: the first bucket closes at exactly its cap.
      {"exact first cap closes the bucket",
       {f32("a", 100), f32("b", 256), f32("c", 256)},
       1 * KiB,
       2 * KiB,
       {{{2}, {0}}, {{1, 0}, {0, 256}}}},
      // One float short of the cap: the next tensor still joins, and the bucket passes the cap.
      {"one element short of the cap",
       {f32("a", 2), f32("b", 2), f32("c", 255)},
       1 * KiB,
       4 * KiB,
       {{{2, 1}, {0, 255}}, {{0}, {0}}}},
      {"huge tensor alone, first",
       {f32("small", 10), f32("huge", 10000)},
       1 * KiB,
       4 * KiB,
       {{{1}, {0}}, {{0}, {0}}}},
      // The huge tensor closes the open bucket rather than joining it.
      {"huge tensor in the middle travels alone",
       {f32("a", 10), f32("huge", 5000), f32("b", 10)},
       1 * KiB,
       4 * KiB,
       {{{2}, {0}}, {{1}, {0}}, {{0}, {0}}}},
      // After the first bucket, the regular cap applies: 600 floats (2400 B) fit under 4 KiB.
      {"later buckets use the regular cap",
       {f32("a", 600), f32("b", 600), f32("c", 600), f32("d", 256)},
       1 * KiB,
       4 * KiB,
       {{{3}, {0}}, {{2, 1}, {0, 600}}, {{0}, {0}}}},
      {"mixed dtypes never share a bucket",
       {f32("a", 10), f16("h1", 10), f32("b", 10), f16("h2", 10)},
       1 * KiB,
       4 * KiB,
       // Open buckets are numbered in the order their dtype first appeared (in reverse order).
       {{{3, 1}, {0, 10}, ScalarType::Half}, {{2, 0}, {0, 10}, ScalarType::Float}}},
      // Caps count bytes, and each dtype has its own first bucket: 512 halves = 1 KiB close the
      // first half bucket; 4 + 1024 float bytes close the first float bucket.
      {"caps are in bytes, per dtype",
       {f16("h", 512), f32("f", 256), f32("g", 1)},
       1 * KiB,
       4 * KiB,
       {{{2, 1}, {0, 1}, ScalarType::Float}, {{0}, {0}, ScalarType::Half}}},
      {"empty tensors are left out",
       {f32("a", 4), f32("nothing", 0), f32("b", 4)},
       1 * KiB,
       4 * KiB,
       {{{2, 0}, {0, 4}}}},
  };
}

TEST(AssignBuckets, TableOfCases) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    std::vector<BucketSpec> got = assign_buckets(c.tensors, c.first_cap, c.cap);
    ASSERT_EQ(got.size(), c.buckets.size());
    for (size_t b = 0; b < got.size(); ++b) {
      SCOPED_TRACE("bucket " + std::to_string(b));
      EXPECT_EQ(got[b].tensors, c.buckets[b].tensors);
      EXPECT_EQ(got[b].offsets, c.buckets[b].offsets);
      EXPECT_EQ(got[b].dtype, c.buckets[b].dtype);
      int64_t numel = 0;
      for (size_t t : got[b].tensors) numel += c.tensors[t].numel;
      EXPECT_EQ(got[b].numel, numel);
    }
  }
}

// Invariants over a larger, irregular model: every non-empty tensor exactly once, offsets dense,
// every bucket closed by reaching the regular cap holds at least the cap, count bounded. (Buckets 0
// and 1 may be small: a tensor above the first cap closes bucket 0 early and then travels alone.)
TEST(AssignBuckets, InvariantsOnIrregularSizes) {
  std::vector<TensorSpec> tensors;
  size_t total = 0;
  for (int k = 0; k < 200; ++k) {
    int64_t numel = (k * 7919) % 3001 + 1;
    tensors.push_back(f32("t" + std::to_string(k), numel));
    total += numel * 4;
  }
  const size_t first_cap = 4 * KiB, cap = 64 * KiB;
  std::vector<BucketSpec> got = assign_buckets(tensors, first_cap, cap);
  std::vector<int> seen(tensors.size(), 0);
  for (size_t b = 0; b < got.size(); ++b) {
    int64_t offset = 0;
    for (size_t s = 0; s < got[b].tensors.size(); ++s) {
      EXPECT_EQ(got[b].offsets[s], offset);
      offset += tensors[got[b].tensors[s]].numel;
      seen[got[b].tensors[s]] += 1;
    }
    EXPECT_EQ(got[b].numel, offset);
    if (b >= 2 && b + 1 < got.size()) {
      EXPECT_GE(got[b].bytes(4), cap);
    }
  }
  for (int s : seen) EXPECT_EQ(s, 1);
  EXPECT_LE(got.size(), (total + cap - 1) / cap + 2);
  // Reverse order: the first bucket starts with the last registered tensor.
  EXPECT_EQ(got.front().tensors.front(), tensors.size() - 1);
}

TEST(AssignBuckets, RejectsZeroCap) {
  EXPECT_THROW(assign_buckets({f32("a", 1)}, 0, 10), dt::Error);
  EXPECT_THROW(assign_buckets({f32("a", 1)}, 10, 0), dt::Error);
}

TEST(AssignBuckets, DescribeNamesEveryBucket) {
  std::vector<TensorSpec> tensors = {f32("a", 512 * 1024), f32("b", 10)};
  std::string text = describe_buckets(assign_buckets(tensors, 1 << 20, 25 << 20), tensors);
  EXPECT_NE(text.find("2 buckets"), std::string::npos) << text;
  EXPECT_NE(text.find("[1] 1 tensors 2.00 MiB"), std::string::npos) << text;
}

}  // namespace
}  // namespace dt::dist
