// dist/metrics.cpp — see metrics.h.
#include "dist/metrics.h"

#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
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

double f1_score(const Confusion& c) {
  DT_CHECK(c.num_labels() == 2, "f1_score: binary F1 needs 2 labels, got " +
                                    std::to_string(c.num_labels()));
  const double tp = static_cast<double>(c.count(1, 1));
  const double fp = static_cast<double>(c.count(0, 1));
  const double fn = static_cast<double>(c.count(1, 0) + c.count(1, -1));  // invalid: not predicted 1
  const double denominator = 2.0 * tp + fp + fn;
  return denominator == 0.0 ? 0.0 : 2.0 * tp / denominator;
}

namespace {

void check_pair(const std::vector<double>& x, const std::vector<double>& y, const char* what) {
  DT_CHECK(x.size() == y.size(), std::string(what) + ": " + std::to_string(x.size()) + " values against " +
                                     std::to_string(y.size()));
  DT_CHECK(x.size() >= 2, std::string(what) + ": needs at least 2 values, got " +
                              std::to_string(x.size()));
}

// Two passes (means, then centred sums): no cancellation from sums of squares.
double pearson_unchecked(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  const double mx = std::accumulate(x.begin(), x.end(), 0.0) / n;
  const double my = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sxy = 0.0, sxx = 0.0, syy = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double dx = x[i] - mx, dy = y[i] - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  if (sxx == 0.0 || syy == 0.0) return 0.0;  // a constant side: no correlation defined
  const double r = sxy / std::sqrt(sxx * syy);
  return std::isnan(r) ? r : std::clamp(r, -1.0, 1.0);
}

// 1-based ranks, a run of equal values all getting the mean of the ranks it spans.
std::vector<double> average_ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> ranks(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i + 1;
    while (j < order.size() && v[order[j]] == v[order[i]]) ++j;
    const double rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2.0;  // mean of i+1..j
    for (size_t k = i; k < j; ++k) ranks[order[k]] = rank;
    i = j;
  }
  return ranks;
}

bool has_nan(const std::vector<double>& v) {
  return std::any_of(v.begin(), v.end(), [](double d) { return std::isnan(d); });
}

}  // namespace

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  check_pair(x, y, "pearson");
  return pearson_unchecked(x, y);
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  check_pair(x, y, "spearman");
  // NaN has no place in an order (sorting it is undefined behaviour): propagate it, as scipy does.
  if (has_nan(x) || has_nan(y)) return std::numeric_limits<double>::quiet_NaN();
  return pearson_unchecked(average_ranks(x), average_ranks(y));
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
  EvalMetrics m;
  m.count = c.total();
  m.accuracy = accuracy(c);
  m.mcc = matthews_corrcoef(c);
  if (c.num_labels() == 2) m.f1 = f1_score(c);
  return m;
}

EvalMetrics gather_metrics(const Confusion& local, comm::Communicator& comm, c10::Device device) {
  return compute_metrics(all_reduce_confusion(local, comm, device));
}

}  // namespace dt::dist
