// dist/metrics.cpp — see metrics.h.
#include "dist/metrics.h"

#include <ATen/ops/from_blob.h>

#include <cmath>
#include <string>

#include "util/error.h"

namespace dt::dist {

Confusion::Confusion(int64_t num_labels)
    : num_labels_(num_labels), counts_(num_labels * (num_labels + 1), 0) {
  DT_CHECK(num_labels > 0, "Confusion: num_labels must be positive");
}

void Confusion::add(int64_t label, int64_t prediction) {
  DT_CHECK(label >= 0 && label < num_labels_,
           "Confusion: label " + std::to_string(label) + " outside [0, " +
               std::to_string(num_labels_) + ")");
  DT_CHECK(prediction >= -1 && prediction < num_labels_,
           "Confusion: prediction " + std::to_string(prediction) + " outside [-1, " +
               std::to_string(num_labels_) + ")");
  const int64_t col = prediction < 0 ? num_labels_ : prediction;
  counts_[label * (num_labels_ + 1) + col] += 1;
}

void Confusion::add(const at::Tensor& labels, const at::Tensor& predictions) {
  DT_CHECK(labels.numel() == predictions.numel(),
           "Confusion: " + std::to_string(labels.numel()) + " labels but " +
               std::to_string(predictions.numel()) + " predictions");
  const at::Tensor l = labels.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor p = predictions.to(at::kCPU, at::kLong).contiguous();
  const int64_t* lp = l.data_ptr<int64_t>();
  const int64_t* pp = p.data_ptr<int64_t>();
  for (int64_t i = 0; i < l.numel(); ++i) add(lp[i], pp[i]);
}

int64_t Confusion::count(int64_t label, int64_t prediction) const {
  DT_CHECK(label >= 0 && label < num_labels_ && prediction >= -1 && prediction < num_labels_,
           "Confusion::count: index outside the matrix");
  return counts_[label * (num_labels_ + 1) + (prediction < 0 ? num_labels_ : prediction)];
}

int64_t Confusion::total() const {
  int64_t n = 0;
  for (int64_t c : counts_) n += c;
  return n;
}

void Confusion::set_counts(const std::vector<int64_t>& counts) {
  DT_CHECK(counts.size() == counts_.size(), "Confusion::set_counts: expected " +
                                                std::to_string(counts_.size()) + " counts, got " +
                                                std::to_string(counts.size()));
  counts_ = counts;
}

double accuracy(const Confusion& c) {
  const int64_t n = c.total();
  if (n == 0) return 0.0;
  int64_t correct = 0;
  for (int64_t k = 0; k < c.num_labels(); ++k) correct += c.count(k, k);
  return static_cast<double>(correct) / static_cast<double>(n);
}

double matthews_corrcoef(const Confusion& c) {
  const int64_t K = c.num_labels();
  // Marginals over K + 1 classes: the invalid class is predicted but never true.
  std::vector<double> t(K + 1, 0.0), p(K + 1, 0.0);
  double correct = 0.0, n = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t j = -1; j < K; ++j) {
      const double v = static_cast<double>(c.count(k, j));
      t[k] += v;
      p[j < 0 ? K : j] += v;
      n += v;
    }
    correct += static_cast<double>(c.count(k, k));
  }
  double tp = 0.0, pp = 0.0, tt = 0.0;
  for (int64_t k = 0; k <= K; ++k) {
    tp += t[k] * p[k];
    pp += p[k] * p[k];
    tt += t[k] * t[k];
  }
  const double cov_tp = correct * n - tp;
  const double cov_pp = n * n - pp;
  const double cov_tt = n * n - tt;
  if (cov_pp == 0.0 || cov_tt == 0.0) return 0.0;
  return cov_tp / std::sqrt(cov_tt * cov_pp);
}

Confusion all_reduce_confusion(const Confusion& local, comm::Communicator& comm,
                               c10::Device device) {
  std::vector<int64_t> counts = local.counts();
  const auto n = static_cast<int64_t>(counts.size());
  at::Tensor t = at::from_blob(counts.data(), {n}, at::kLong).to(device);
  comm.all_reduce(t, {comm::ReduceOp::Sum})->wait();
  t = t.to(at::kCPU).contiguous();
  Confusion global(local.num_labels());
  global.set_counts(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n));
  return global;
}

EvalMetrics compute_metrics(const Confusion& c) {
  return {c.total(), accuracy(c), matthews_corrcoef(c)};
}

EvalMetrics gather_metrics(const Confusion& local, comm::Communicator& comm, c10::Device device) {
  return compute_metrics(all_reduce_confusion(local, comm, device));
}

}  // namespace dt::dist
