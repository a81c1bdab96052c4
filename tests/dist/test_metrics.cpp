// tests/dist/test_metrics.cpp — accuracy and Matthews correlation from confusion counts, against
// hand-computed values.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>

#include "dist/metrics.h"
#include "util/error.h"

namespace dt::dist {
namespace {

Confusion binary(int64_t tp, int64_t tn, int64_t fp, int64_t fn) {
  Confusion c(2);
  for (int64_t i = 0; i < tp; ++i) c.add(1, 1);
  for (int64_t i = 0; i < tn; ++i) c.add(0, 0);
  for (int64_t i = 0; i < fp; ++i) c.add(0, 1);
  for (int64_t i = 0; i < fn; ++i) c.add(1, 0);
  return c;
}

TEST(Metrics, BinaryMccByHand) {
  // TP 5, TN 3, FP 2, FN 1: (5·3 − 2·1) / sqrt(7·6·5·4) = 13 / sqrt(840) = 0.4485426135725303.
  const Confusion c = binary(5, 3, 2, 1);
  EXPECT_NEAR(matthews_corrcoef(c), 0.4485426135725303, 1e-15);
  EXPECT_DOUBLE_EQ(accuracy(c), 8.0 / 11.0);
  EXPECT_EQ(c.total(), 11);
  EXPECT_EQ(c.count(0, 1), 2);
  // Perfect, inverted, and constant predictions (a vanishing marginal gives 0, as scikit-learn).
  EXPECT_DOUBLE_EQ(matthews_corrcoef(binary(4, 6, 0, 0)), 1.0);
  EXPECT_DOUBLE_EQ(matthews_corrcoef(binary(0, 0, 6, 4)), -1.0);
  EXPECT_DOUBLE_EQ(matthews_corrcoef(binary(4, 0, 6, 0)), 0.0);
  EXPECT_DOUBLE_EQ(accuracy(Confusion(2)), 0.0);
}

TEST(Metrics, MultiClassWithInvalidPredictions) {
  // Reference: the correlation of the centred one-hot vectors of truth and prediction over the
  // classes {0, 1, 2, invalid} (numpy), 0.47776654295295456.
  const std::vector<int64_t> truth = {0, 0, 1, 1, 2, 2, 2, 0};
  const std::vector<int64_t> pred = {0, 1, 1, -1, 2, 0, 2, 0};
  Confusion c(3);
  c.add(at::tensor(truth, at::kLong), at::tensor(pred, at::kLong));
  EXPECT_NEAR(matthews_corrcoef(c), 0.47776654295295456, 1e-14);
  EXPECT_DOUBLE_EQ(accuracy(c), 5.0 / 8.0);  // the invalid one counts as wrong
  EXPECT_EQ(c.count(1, -1), 1);
  const EvalMetrics m = compute_metrics(c);
  EXPECT_EQ(m.count, 8);
  EXPECT_DOUBLE_EQ(m.accuracy, 5.0 / 8.0);
}

TEST(Metrics, RejectsOutOfRangeLabels) {
  Confusion c(2);
  EXPECT_THROW(c.add(2, 0), Error);
  EXPECT_THROW(c.add(0, 2), Error);
  EXPECT_THROW(c.add(-1, 0), Error);
  EXPECT_THROW(c.add(at::zeros({3}, at::kLong), at::zeros({2}, at::kLong)), Error);
  EXPECT_THROW(c.set_counts({1, 2}), Error);
}

}  // namespace
}  // namespace dt::dist
