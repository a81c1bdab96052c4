// dist/metrics.h — classification metrics from confusion counts, gathered across ranks, and the
// correlations of a regression task.
//
// Design note: each rank evaluates an exact shard of the dev set (shard_indices: no padding, so no
// example counts twice) and keeps integer confusion counts; one all-reduce of that int64 matrix gives
// every rank the global counts, from which accuracy and Matthews correlation follow exactly (sums of
// counts are order-independent, so the result equals the single-process one bit for bit).
// A prediction may be "invalid" (-1: e.g. a T5 output that is none of the label words); it counts as
// wrong, and for MCC as an extra predicted class, as scikit-learn does with such a label.
// F1 (MRPC) is of class 1 and also follows from the counts; an invalid prediction of a positive example
// is a false negative.
// Pearson and Spearman correlation (STS-B) do not decompose into counts (Spearman needs the ranks of
// the whole dev set), so they take whole vectors: gather every rank's (target, prediction) pairs in
// dev-set order first; on the same ordered vectors the result is the single-process one bit for bit.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "comm/communicator.h"

namespace dt::dist {

class Confusion {
 public:
  explicit Confusion(int64_t num_labels);

  // `label` in [0, num_labels); `prediction` in [0, num_labels) or -1 (invalid).
  void add(int64_t label, int64_t prediction);
  // int64 tensors of the same length (any device); predictions may hold -1.
  void add(const at::Tensor& labels, const at::Tensor& predictions);

  int64_t num_labels() const { return num_labels_; }
  // Examples of true class `label` predicted as `prediction` (-1: invalid).
  int64_t count(int64_t label, int64_t prediction) const;
  int64_t total() const;
  // Row-major [num_labels, num_labels + 1] counts; the last column is the invalid predictions.
  const std::vector<int64_t>& counts() const { return counts_; }
  void set_counts(const std::vector<int64_t>& counts);

 private:
  int64_t num_labels_;
  std::vector<int64_t> counts_;
};

double accuracy(const Confusion& c);
// Multi-class Matthews correlation (Gorodkin's R_K, scikit-learn's matthews_corrcoef); 0 when a
// marginal is constant (the denominator vanishes), as scikit-learn returns.
double matthews_corrcoef(const Confusion& c);
// Binary F1 of the positive class 1, 2·TP / (2·TP + FP + FN) (scikit-learn's f1_score default); 0 when
// there is no true and no predicted positive (scikit-learn's zero_division=0). num_labels must be 2.
double f1_score(const Confusion& c);

// Pearson's r of x and y (scipy.stats.pearsonr's statistic, clamped to [-1, 1] as scipy does); 0 when
// either has zero variance (scipy warns and gives NaN there; 0 keeps a constant predictor's score a
// number that averages). Equal sizes, at least 2, else dt::Error. NaN in, NaN out.
double pearson(const std::vector<double>& x, const std::vector<double>& y);
// Spearman's rho: Pearson's r of the ranks, ties given their average rank (scipy.stats.spearmanr);
// 0 when either is constant. Equal sizes, at least 2. NaN anywhere gives NaN (scipy's "propagate").
double spearman(const std::vector<double>& x, const std::vector<double>& y);

// Sums every rank's counts (one all-reduce of num_labels × (num_labels + 1) int64s) and returns the
// global confusion. Collective: every rank calls it with the same num_labels. `device` is where the
// backend wants its tensors (CUDA for NCCL: pass the model's device).
Confusion all_reduce_confusion(const Confusion& local, comm::Communicator& comm,
                               c10::Device device = c10::kCPU);

struct EvalMetrics {
  int64_t count = 0;
  double accuracy = 0.0;
  double mcc = 0.0;
  double f1 = 0.0;        // compute_metrics fills it for two labels
  double pearson = 0.0;   // regression tasks: filled by the caller (pearson(), spearman())
  double spearman = 0.0;
};
// count, accuracy, mcc, and f1 when num_labels == 2.
EvalMetrics compute_metrics(const Confusion& c);
// all_reduce_confusion then compute_metrics.
EvalMetrics gather_metrics(const Confusion& local, comm::Communicator& comm,
                           c10::Device device = c10::kCPU);

}  // namespace dt::dist
