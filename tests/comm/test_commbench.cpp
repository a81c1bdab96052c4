// The arithmetic of `deltatune commbench` (launch/commbench.h): sizes, suffixes, bus factors.
#include <gtest/gtest.h>

#include "launch/commbench.h"
#include "util/error.h"

namespace dt::launch::commbench {
namespace {

TEST(CommbenchBytes, AcceptsPlainNumbersAndBinarySuffixes) {
  EXPECT_EQ(parse_bytes("8", "-b"), 8);
  EXPECT_EQ(parse_bytes("0", "-b"), 0);
  EXPECT_EQ(parse_bytes("64K", "-b"), 64 * 1024);
  EXPECT_EQ(parse_bytes("64k", "-b"), 64 * 1024);
  EXPECT_EQ(parse_bytes("64M", "-e"), 64LL * 1024 * 1024);
  EXPECT_EQ(parse_bytes("2G", "-e"), 2LL * 1024 * 1024 * 1024);
}

TEST(CommbenchBytes, RejectsWhatIsNotAByteCountNamingTheFlag) {
  for (const char* bad : {"", "M", "-8", "8MB", "8T", "1.5M", "x"}) {
    try {
      parse_bytes(bad, "--maxbytes");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const dt::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--maxbytes '" + std::string(bad) + "'"), std::string::npos) << e.what();
    }
  }
}

TEST(CommbenchOps, NamesRoundTripAndUnknownOpsAreUsageErrors) {
  for (Op op : {Op::AllReduce, Op::AllGather, Op::Broadcast, Op::ReduceScatter}) {
    EXPECT_EQ(parse_op(op_name(op)), op);
  }
  EXPECT_STREQ(redop_name(Op::AllReduce), "sum");
  EXPECT_STREQ(redop_name(Op::ReduceScatter), "sum");
  EXPECT_STREQ(redop_name(Op::AllGather), "none");
  EXPECT_STREQ(redop_name(Op::Broadcast), "none");
  EXPECT_THROW(parse_op("alltoall"), dt::UsageError);
}

// nccl-tests' doc/PERFORMANCE.md: 2(n-1)/n, (n-1)/n, (n-1)/n, 1.
TEST(CommbenchBandwidth, BusFactorsFollowTheRingArguments) {
  EXPECT_DOUBLE_EQ(bus_factor(Op::AllReduce, 1), 0.0);
  EXPECT_DOUBLE_EQ(bus_factor(Op::AllReduce, 2), 1.0);
  EXPECT_DOUBLE_EQ(bus_factor(Op::AllReduce, 4), 1.5);
  EXPECT_DOUBLE_EQ(bus_factor(Op::AllGather, 4), 0.75);
  EXPECT_DOUBLE_EQ(bus_factor(Op::ReduceScatter, 8), 0.875);
  EXPECT_DOUBLE_EQ(bus_factor(Op::Broadcast, 8), 1.0);
}

TEST(CommbenchSizes, GeometricFromMinToMaxInclusive) {
  // -b 8 -e 64M -f 4: 8·4^k up to 32M (the next, 128M, is above 64M).
  const auto sizes = benchmark_sizes(8, 64LL << 20, 4, Op::AllReduce, 4, 2);
  ASSERT_EQ(sizes.size(), 12u);
  EXPECT_EQ(sizes.front(), 8);
  EXPECT_EQ(sizes[1], 32);
  EXPECT_EQ(sizes.back(), 32LL << 20);
  const auto exact = benchmark_sizes(8, 64, 2, Op::AllReduce, 4, 2);
  EXPECT_EQ(exact, (std::vector<int64_t>{8, 16, 32, 64}));
  EXPECT_EQ(benchmark_sizes(100, 100, 1, Op::AllReduce, 4, 2), (std::vector<int64_t>{100}));
}

TEST(CommbenchSizes, RoundedDownToWholeElementsAndPerRankBlocks) {
  // float all-reduce: multiples of 4 bytes.
  EXPECT_EQ(benchmark_sizes(10, 30, 3, Op::AllReduce, 4, 4), (std::vector<int64_t>{8, 28}));
  // all-gather / reduce-scatter on 4 ranks of doubles: multiples of 32 bytes (may round to 0).
  EXPECT_EQ(benchmark_sizes(8, 128, 2, Op::AllGather, 8, 4), (std::vector<int64_t>{0, 0, 32, 64, 128}));
  EXPECT_EQ(benchmark_sizes(40, 40, 2, Op::ReduceScatter, 2, 3), (std::vector<int64_t>{36}));
  // broadcast needs whole elements only.
  EXPECT_EQ(benchmark_sizes(6, 6, 2, Op::Broadcast, 4, 4), (std::vector<int64_t>{4}));
}

}  // namespace
}  // namespace dt::launch::commbench
