// Every collective × every dtype × several lengths against closed-form values.
//
// Rank r contributes (r + 1) + (i mod 16) at element i, so with n ranks a sum is
// n(n + 1)/2 + n·(i mod 16): at most 70 for n = 4, an integer that bfloat16 and float16 hold exactly,
// and so does every partial sum. Averages are those sums over n (x.5 at most, exact too; integers
// truncate). Lengths cover empty, one element, odd and multi-chunk buffers.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "comm/communicator.h"
#include "tests/mpi_test_util.h"

namespace dt::comm {
namespace {

using dt::testing::test_comm;

// (r + 1) + (i mod 16) for i in [first, first + len), as `dtype`.
at::Tensor rank_values(int r, int64_t len, at::ScalarType dtype, int64_t first = 0) {
  return (at::arange(first, first + len, at::kLong).remainder(16) + (r + 1)).to(dtype);
}

// n(n + 1)/2 + n·(i mod 16), in double.
at::Tensor sum_values(int n, int64_t len, int64_t first = 0) {
  return (at::arange(first, first + len, at::kLong).remainder(16) * n + n * (n + 1) / 2).to(at::kDouble);
}

at::Tensor average_values(int n, int64_t len, at::ScalarType dtype, int64_t first = 0) {
  at::Tensor sum = sum_values(n, len, first);
  if (at::isIntegralType(dtype, false)) return sum.to(at::kLong).div(n, "trunc").to(at::kDouble);
  return sum / n;
}

// Exact comparison, reporting the first differing element.
void expect_exact(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.numel(), expected.numel()) << what;
  at::Tensor a = actual.to(at::kDouble).reshape({-1});
  at::Tensor e = expected.to(at::kDouble).reshape({-1});
  at::Tensor wrong = a.ne(e).nonzero();
  if (wrong.numel() == 0) return;
  const int64_t i = wrong[0][0].item<int64_t>();
  ADD_FAILURE() << what << ": " << wrong.size(0) << " wrong elements; first at " << i << ": got "
                << a[i].item<double>() << ", expected " << e[i].item<double>();
}

class Collectives : public ::testing::TestWithParam<std::tuple<at::ScalarType, int64_t>> {
 protected:
  at::ScalarType dtype() const { return std::get<0>(GetParam()); }
  int64_t len() const { return std::get<1>(GetParam()); }
  Communicator& comm() { return test_comm(); }
  int rank() { return comm().rank(); }
  int n() { return comm().size(); }
};

TEST_P(Collectives, AllReduceSum) {
  at::Tensor t = rank_values(rank(), len(), dtype());
  comm().all_reduce(t)->wait();
  EXPECT_EQ(t.scalar_type(), dtype());
  expect_exact(t, sum_values(n(), len()), "all_reduce sum");
}

TEST_P(Collectives, AllReduceAverage) {
  at::Tensor t = rank_values(rank(), len(), dtype());
  comm().all_reduce(t, {ReduceOp::Average})->wait();
  expect_exact(t, average_values(n(), len(), dtype()), "all_reduce average");
}

TEST_P(Collectives, BroadcastFromFirstAndLastRank) {
  for (int root : {0, n() - 1}) {
    at::Tensor t = rank_values(rank(), len(), dtype());  // differs from root's on every other rank
    comm().broadcast(t, {root})->wait();
    expect_exact(t, rank_values(root, len(), dtype()), "broadcast from " + std::to_string(root));
  }
}

TEST_P(Collectives, AllGather) {
  at::Tensor in = rank_values(rank(), len(), dtype());
  at::Tensor out = at::full({n() * len()}, -1, dtype());
  comm().all_gather(in, out)->wait();
  std::vector<at::Tensor> blocks;
  for (int r = 0; r < n(); ++r) blocks.push_back(rank_values(r, len(), dtype()));
  expect_exact(out, at::cat(blocks), "all_gather");
}

// Rank r contributes len + r elements, or none on odd ranks when len is 0.
TEST_P(Collectives, AllGatherV) {
  std::vector<int64_t> counts;
  for (int r = 0; r < n(); ++r) counts.push_back(len() == 0 ? (r % 2) * 3 : len() + r);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  at::Tensor in = rank_values(rank(), counts[rank()], dtype());
  at::Tensor out = at::full({total}, -1, dtype());
  comm().all_gather_v(in, out, counts)->wait();
  std::vector<at::Tensor> blocks;
  for (int r = 0; r < n(); ++r) blocks.push_back(rank_values(r, counts[r], dtype()));
  expect_exact(out, at::cat(blocks), "all_gather_v");
}

TEST_P(Collectives, ReduceScatterSumAndAverage) {
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Average}) {
    at::Tensor in = rank_values(rank(), n() * len(), dtype());
    at::Tensor out = at::full({len()}, -1, dtype());
    comm().reduce_scatter(in, out, {op})->wait();
    const int64_t first = rank() * len();  // this rank's block of the input
    expect_exact(out,
                 op == ReduceOp::Sum ? sum_values(n(), len(), first)
                                     : average_values(n(), len(), dtype(), first),
                 op == ReduceOp::Sum ? "reduce_scatter sum" : "reduce_scatter average");
  }
}

std::string param_name(const ::testing::TestParamInfo<Collectives::ParamType>& info) {
  return std::string(c10::toString(std::get<0>(info.param))) + "_" + std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(DtypesAndLengths, Collectives,
                         ::testing::Combine(::testing::Values(at::kFloat, at::kDouble, at::kBFloat16,
                                                              at::kHalf, at::kInt, at::kLong),
                                            ::testing::Values<int64_t>(0, 1, 7, 1023, 4099)),
                         param_name);

// Shapes other than 1-D travel as their contiguous elements.
TEST(CollectivesShape, AllReduceOfMatrixKeepsShape) {
  auto& comm = test_comm();
  at::Tensor t = rank_values(comm.rank(), 12, at::kFloat).reshape({3, 4});
  comm.all_reduce(t)->wait();
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{3, 4}));
  expect_exact(t, sum_values(comm.size(), 12), "all_reduce of a 3×4 matrix");
}

// MPI has no 16-bit float types; the backend's own sum must round the float sum to nearest even,
// as torch's conversion does. 256 + 3 = 259 lies halfway between bfloat16's 258 and 260 (2048 + 3
// likewise for float16): round-to-nearest-even gives 260 (2052), truncation would give 258 (2050).
TEST(CollectivesRounding, SixteenBitSumsRoundToNearestEven) {
  auto& comm = test_comm();
  if (comm.size() < 2) GTEST_SKIP() << "needs two contributions";
  for (auto [dtype, big] : {std::pair{at::kBFloat16, 256.0}, std::pair{at::kHalf, 2048.0}}) {
    const double mine = comm.rank() == 0 ? big : comm.rank() == 1 ? 3.0 : 0.0;
    at::Tensor t = at::full({5}, mine, dtype);
    comm.all_reduce(t)->wait();
    const at::Tensor expected = at::full({5}, big + 3.0, at::kFloat).to(dtype);
    EXPECT_EQ(expected[0].item<double>(), big + 4.0);
    expect_exact(t, expected, std::string(c10::toString(dtype)) + " sum");
  }
}

// Above 64 MB: float32 × 17M = 68 MB, beyond the buffers of the small-message algorithms.
TEST(CollectivesLarge, AllReduceOf68MegabytesOfFloat) {
  auto& comm = test_comm();
  const int64_t len = 17'000'000;
  at::Tensor t = rank_values(comm.rank(), len, at::kFloat);
  comm.all_reduce(t)->wait();
  expect_exact(t, sum_values(comm.size(), len), "68 MB all_reduce");
}

}  // namespace
}  // namespace dt::comm
