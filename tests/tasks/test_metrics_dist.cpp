// tests/tasks/test_metrics_dist.cpp — metrics gathered over 2 and 4 ranks from exact eval shards
// equal the single-process values on the same predictions, with one all-reduce of the counts.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstdlib>

#include "tasks/glue.h"
#include "dist/metrics.h"
#include "dist/sampler.h"
#include "tests/mpi_test_util.h"

namespace dt::dist {
namespace {

// A fixed, imperfect "model": right on most examples, wrong or invalid on a pattern of others.
int64_t predict(int64_t i, int64_t label) {
  if (i % 11 == 3) return -1;
  if (i % 5 == 0 || i % 7 == 2) return 1 - label;
  return label;
}

TEST(MetricsDist, GatheredEqualsSingleProcessOnCoLADev) {
  auto& comm = testing::test_comm();
  const char* src = std::getenv("DELTATUNE_SOURCE_DIR");
  ASSERT_NE(src, nullptr);
  const auto dev = tasks::read_glue(std::string(src) + "/data/glue", "cola", "dev");
  const auto n = static_cast<int64_t>(dev.size());

  Confusion whole(2);
  for (int64_t i = 0; i < n; ++i) whole.add(dev[i].label, predict(i, dev[i].label));

  Confusion mine(2);
  std::vector<int64_t> labels, preds;
  for (int64_t i : shard_indices(n, comm.rank(), comm.size())) {
    labels.push_back(dev[i].label);
    preds.push_back(predict(i, dev[i].label));
  }
  mine.add(at::tensor(labels, at::kLong), at::tensor(preds, at::kLong));
  EXPECT_LT(mine.total(), n);  // each rank saw only its shard

  const auto before = comm.counters(comm::Collective::AllReduce);
  const EvalMetrics m = gather_metrics(mine, comm);
  const auto after = comm.counters(comm::Collective::AllReduce);
  EXPECT_EQ(after.calls - before.calls, 1u);
  EXPECT_EQ(after.bytes - before.bytes, 2u * 3u * 8u);  // 2 × (2 + 1) int64 counts

  const EvalMetrics ref = compute_metrics(whole);
  EXPECT_EQ(m.count, 1043);  // no example counted twice, none missed
  EXPECT_EQ(m.accuracy, ref.accuracy);
  EXPECT_EQ(m.mcc, ref.mcc);
  EXPECT_GT(m.mcc, 0.1);  // neither degenerate nor perfect: the comparison above means something
  EXPECT_LT(m.mcc, 0.9);
}

TEST(MetricsDist, UnevenShardsAndEmptyRanks) {
  auto& comm = testing::test_comm();
  // Fewer examples than ranks at np 4: some ranks hold nothing and still take part.
  const int64_t n = 3;
  Confusion mine(3);
  for (int64_t i : shard_indices(n, comm.rank(), comm.size())) mine.add(i, i == 2 ? 0 : i);
  const Confusion global = all_reduce_confusion(mine, comm);
  EXPECT_EQ(global.total(), n);
  EXPECT_EQ(global.count(2, 0), 1);
  EXPECT_DOUBLE_EQ(accuracy(global), 2.0 / 3.0);
}

}  // namespace
}  // namespace dt::dist
