// tests/dist/test_metrics.cpp — accuracy, Matthews correlation and F1 from confusion counts, and the
// Pearson / Spearman correlations of STS-B, against hand-computed and numpy-computed values.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <vector>

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

// ---- F1, Pearson, Spearman ---------------------------------------------------------------------
//
// scipy and scikit-learn are not installed here (and nothing is pip-installed for a test), so the
// reference values below come from plain numpy formulas, run with the project's venv numpy 2.4.6:
//   .venv/bin/python - <<'EOF'
//   import numpy as np
//   def f1(t, p):  # binary F1 of class 1; -1 = invalid prediction (never class 1)
//       t, p = np.asarray(t), np.asarray(p)
//       tp = np.sum((t == 1) & (p == 1)); fp = np.sum((t == 0) & (p == 1)); fn = np.sum((t == 1) & (p != 1))
//       return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
//   def ranks(a):  # scipy.stats.rankdata(method='average'): each distinct value gets its ranks' mean
//       a = np.asarray(a, float); r = np.empty(len(a))
//       r[np.argsort(a, kind='mergesort')] = np.arange(1, len(a) + 1)
//       for u in np.unique(a): r[a == u] = r[a == u].mean()
//       return r
//   pearson = lambda x, y: np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1]
//   spearman = lambda x, y: pearson(ranks(x), ranks(y))
//   print(repr(f1(...)), repr(pearson(...)), repr(spearman(...)))  # the vectors of each test
//   EOF
// The tie-free Spearman value is also 1 − 6·Σd²/(n(n²−1)) by hand, and F1 is 2·TP / (2·TP + FP + FN).

TEST(Metrics, F1OfThePositiveClass) {
  // TP 5, TN 3, FP 2, FN 1: 10 / 13 (numpy: 0.7692307692307693).
  EXPECT_NEAR(f1_score(binary(5, 3, 2, 1)), 0.7692307692307693, 1e-15);
  // An invalid prediction (-1) of a positive example is a false negative, of a negative one nothing:
  // truth [1,1,1,1,0,0,0,1,0], predictions [1,-1,0,1,1,-1,0,1,0]: TP 3, FP 1, FN 2 -> 6 / 9
  // (numpy: 0.6666666666666666).
  Confusion c(2);
  c.add(at::tensor(std::vector<int64_t>{1, 1, 1, 1, 0, 0, 0, 1, 0}, at::kLong),
        at::tensor(std::vector<int64_t>{1, -1, 0, 1, 1, -1, 0, 1, 0}, at::kLong));
  EXPECT_NEAR(f1_score(c), 0.6666666666666666, 1e-15);
  EXPECT_DOUBLE_EQ(compute_metrics(c).f1, f1_score(c));
  // No true and no predicted positive: 0 (scikit-learn's zero_division=0); only false positives: 0.
  EXPECT_EQ(f1_score(binary(0, 3, 0, 0)), 0.0);
  EXPECT_EQ(f1_score(Confusion(2)), 0.0);
  EXPECT_EQ(f1_score(binary(0, 0, 2, 0)), 0.0);
  EXPECT_DOUBLE_EQ(f1_score(binary(4, 6, 0, 0)), 1.0);
  // Binary only; compute_metrics leaves f1 at 0 for more labels.
  EXPECT_THROW(f1_score(Confusion(3)), Error);
  Confusion three(3);
  three.add(1, 1);
  EXPECT_EQ(compute_metrics(three).f1, 0.0);
}

TEST(Metrics, PearsonAgainstNumpy) {
  EXPECT_NEAR(pearson({1, 2, 3, 4, 5}, {2, 1, 4, 3, 5}), 0.8, 1e-15);  // 8 / 10 by hand
  const std::vector<double> x1 = {0.5, 2.25, 3.0, 4.75, 1.0, 3.5}, y1 = {1.2, 2.0, 2.9, 5.0, 0.1, 3.3};
  EXPECT_NEAR(pearson(x1, y1), 0.9503254132975867, 1e-14);
  const std::vector<double> x2 = {1, 2, 2, 3, 4, 4, 4, 5}, y2 = {2, 1, 3, 3, 5, 4, 4, 6};
  EXPECT_NEAR(pearson(x2, y2), 0.8867963503478637, 1e-14);
  // STS-B-like: gold scores against a model's predictions.
  const std::vector<double> t3 = {5.0, 4.75, 0.0, 2.4, 2.4, 3.8, 1.0};
  const std::vector<double> p3 = {4.1, 4.1, 0.9, 2.0, 3.1, 3.1, 1.6};
  EXPECT_NEAR(pearson(t3, p3), 0.9607345625139835, 1e-14);
  // Symmetric, invariant to scale and shift, and sign-flipped by negation.
  EXPECT_NEAR(pearson(p3, t3), pearson(t3, p3), 1e-15);
  std::vector<double> scaled, negated;
  for (double v : p3) scaled.push_back(3.0 * v - 7.0), negated.push_back(-v);
  EXPECT_NEAR(pearson(t3, scaled), 0.9607345625139835, 1e-14);
  EXPECT_NEAR(pearson(t3, negated), -0.9607345625139835, 1e-14);
  EXPECT_DOUBLE_EQ(pearson({1, 2, 3}, {1, 2, 3}), 1.0);
}

TEST(Metrics, SpearmanWithTiesAgainstNumpy) {
  // No ties: Σd² = 2 over n = 6, 1 − 12/210 = 0.9428571428571428 (numpy: 0.942857142857143).
  const std::vector<double> x1 = {0.5, 2.25, 3.0, 4.75, 1.0, 3.5}, y1 = {1.2, 2.0, 2.9, 5.0, 0.1, 3.3};
  EXPECT_NEAR(spearman(x1, y1), 0.942857142857143, 1e-14);
  // Ties on both sides: ranks [1, 2.5, 2.5, 4, 6, 6, 6, 8] and [2, 1, 3.5, 3.5, 7, 5.5, 5.5, 8].
  const std::vector<double> x2 = {1, 2, 2, 3, 4, 4, 4, 5}, y2 = {2, 1, 3, 3, 5, 4, 4, 6};
  EXPECT_NEAR(spearman(x2, y2), 0.9256265453136692, 1e-14);
  const std::vector<double> t3 = {5.0, 4.75, 0.0, 2.4, 2.4, 3.8, 1.0};
  const std::vector<double> p3 = {4.1, 4.1, 0.9, 2.0, 3.1, 3.1, 1.6};
  EXPECT_NEAR(spearman(t3, p3), 0.9633432944855655, 1e-14);
  // Ranks only: any increasing map of one side changes nothing.
  std::vector<double> cubed;
  for (double v : p3) cubed.push_back(v * v * v);
  EXPECT_NEAR(spearman(t3, cubed), 0.9633432944855655, 1e-14);
  EXPECT_DOUBLE_EQ(spearman({3, 1, 2}, {30, 10, 20}), 1.0);
  EXPECT_DOUBLE_EQ(spearman({3, 1, 2}, {-30, -10, -20}), -1.0);
}

TEST(Metrics, CorrelationEdgeCases) {
  // A constant side has no variance: 0 (scipy would warn and return NaN).
  EXPECT_EQ(pearson({2, 2, 2}, {1, 2, 3}), 0.0);
  EXPECT_EQ(pearson({1, 2, 3}, {0, 0, 0}), 0.0);
  EXPECT_EQ(spearman({1, 2, 3}, {4, 4, 4}), 0.0);
  // NaN propagates (scipy's nan_policy='propagate') instead of sorting NaN.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(std::isnan(pearson({1, nan, 3}, {1, 2, 3})));
  EXPECT_TRUE(std::isnan(spearman({1, 2, 3}, {1, nan, 3})));
  // Unequal sizes and fewer than two values are errors.
  EXPECT_THROW(pearson({1, 2, 3}, {1, 2}), Error);
  EXPECT_THROW(spearman({1}, {1}), Error);
  EXPECT_THROW(pearson({}, {}), Error);
}

}  // namespace
}  // namespace dt::dist
