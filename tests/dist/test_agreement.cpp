// Start-up agreement under mpirun -np 2/4, and the hashes it is built on.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "dist/agreement.h"
#include "tests/mpi_test_util.h"
#include "util/error.h"

namespace dt::dist {
namespace {

comm::Communicator& C() { return dt::testing::test_comm(); }

using Items = std::vector<std::pair<std::string, std::string>>;

Items base_items() {
  return {{"config", "[train]\nlr = 0.001\nsteps = 100\n"},
          {"backbone", "stories260K sha=abc"},
          {"trainable", "lora.q.A [8,64]\nlora.q.B [64,8]\ncount=2"},
          {"mask", hash_hex(42)}};
}

// Runs agree_or_throw and returns the error text ("" if it did not throw).
std::string agree(const Items& items) {
  try {
    agree_or_throw(C(), items);
  } catch (const dt::Error& e) {
    return e.what();
  }
  return {};
}

TEST(Hash, Fnv1aReferenceValues) {
  // Published FNV-1a 64 test vectors.
  EXPECT_EQ(hash_string(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(hash_string("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(hash_string("foobar"), 0x85944171f73967e8ULL);
  EXPECT_EQ(hash_hex(0xaf63dc4c8601ec8cULL), "af63dc4c8601ec8c");
}

TEST(Hash, TensorsByBytesShapeAndDtype) {
  torch::manual_seed(0);
  at::Tensor a = torch::randn({5, 7}), b = torch::randn({13});
  const uint64_t h = hash_tensors({a, b});
  EXPECT_EQ(hash_tensors({a.clone(), b.clone()}), h);  // the bytes, not the addresses
  at::Tensor a2 = a.clone();
  a2.view(-1)[17] = std::nextafter(a2.view(-1)[17].item<float>(), 1e9f);  // one ulp
  EXPECT_NE(hash_tensors({a2, b}), h);
  EXPECT_NE(hash_tensors({b, a}), h);                    // order matters
  EXPECT_NE(hash_tensors({a.reshape({7, 5}), b}), h);    // same bytes, other shape
  EXPECT_NE(hash_tensors({a.view(torch::kInt), b}), h);  // same bytes, other dtype
  // Odd byte counts (the tail word) are covered: 3 bytes vs 3 other bytes.
  EXPECT_NE(hash_tensors({torch::tensor({1, 2, 3}, torch::kUInt8)}),
            hash_tensors({torch::tensor({1, 2, 4}, torch::kUInt8)}));
  // Non-contiguous tensors hash as their contiguous copy.
  at::Tensor t = torch::randn({4, 6});
  EXPECT_EQ(hash_tensors({t.t()}), hash_tensors({t.t().contiguous()}));
}

TEST(Agreement, SameItemsPass) { EXPECT_EQ(agree(base_items()), ""); }

TEST(Agreement, EmptyListPasses) { EXPECT_EQ(agree({}), ""); }

TEST(Agreement, ConfigDifferentOnRankOneThrowsEverywhere) {
  Items items = base_items();
  if (C().rank() == 1) items[0].second += "seed = 7\n";
  const std::string what = agree(items);
  ASSERT_NE(what, "") << "no error on rank " << C().rank();
  EXPECT_NE(what.find("start-up mismatch in 'config': rank 1 differs from rank 0"),
            std::string::npos)
      << what;
  EXPECT_EQ(what.find("'backbone'"), std::string::npos) << what;  // only the item that differs
}

TEST(Agreement, NamesEveryDifferingRankAndItem) {
  if (C().size() < 4) GTEST_SKIP() << "needs 4 ranks";
  Items items = base_items();
  if (C().rank() == 1 || C().rank() == 3) items[2].second += "extra [1]\n";
  if (C().rank() == 2) items[3].second = hash_hex(43);
  const std::string what = agree(items);
  EXPECT_NE(what.find("'trainable': ranks 1, 3 differ from rank 0"), std::string::npos) << what;
  EXPECT_NE(what.find("'mask': rank 2 differs from rank 0"), std::string::npos) << what;
}

TEST(Agreement, FrozenWeightsComparedByHash) {
  torch::manual_seed(5);
  at::Tensor w = torch::randn({64, 64});
  if (C().rank() == C().size() - 1) w[3][4] += 1e-3;
  const std::string what = agree({{"frozen", hash_hex(hash_tensors({w}))}});
  EXPECT_NE(what.find("'frozen': rank " + std::to_string(C().size() - 1) + " differs"),
            std::string::npos)
      << what;
}

TEST(Agreement, DifferentNumberOfItemsThrowsEverywhere) {
  Items items = base_items();
  if (C().rank() == 1) items.pop_back();
  const std::string what = agree(items);
  EXPECT_NE(what.find("list of checked items: rank 1 differs from rank 0"), std::string::npos)
      << what;
}

}  // namespace
}  // namespace dt::dist
