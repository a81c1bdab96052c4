// peft/s3delta/gates.cpp — the shifted global sigmoid, the relaxed Bernoulli gates and the greedy fill
// under the budget; see s3delta.h.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "peft/s3delta/s3delta.h"
#include "util/error.h"

namespace dt::peft::s3delta {

namespace {
constexpr double kTargetSlack = 1e-7;  // the paper's EPS: Σ n·p = B·(1 − EPS)
constexpr double kPClamp = 1e-6;       // p stays inside (0, 1) for logit(p)

double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }
}  // namespace

double solve_shift(const std::vector<double>& alphas, const std::vector<int64_t>& sizes, int64_t budget, double beta) {
  DT_CHECK(alphas.size() == sizes.size() && !alphas.empty(), "s3delta: one size per structure parameter");
  DT_CHECK(beta > 0, "s3delta: the gate temperature beta must be positive");
  const double total = std::accumulate(sizes.begin(), sizes.end(), 0.0);
  if (static_cast<double>(budget) >= total) return -std::numeric_limits<double>::infinity();
  const double target = static_cast<double>(budget) * (1.0 - kTargetSlack);
  auto expected = [&](double shift) {
    double sum = 0;
    for (size_t i = 0; i < alphas.size(); ++i) sum += static_cast<double>(sizes[i]) * sigmoid((alphas[i] - shift) / beta);
    return sum;
  };
  // expected() falls from ~total to ~0 as the shift grows; 40·beta past the α's either way brackets it.
  const auto [lo_it, hi_it] = std::minmax_element(alphas.begin(), alphas.end());
  double lo = *lo_it - 40.0 * beta - std::log(total + 1.0) * beta, hi = *hi_it + 40.0 * beta;
  for (int i = 0; i < 200 && hi - lo > 1e-12 * std::max(1.0, std::abs(hi)); ++i) {
    const double mid = 0.5 * (lo + hi);
    (expected(mid) > target ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

at::Tensor gate_probabilities(const at::Tensor& alphas, double shift, double beta, bool shift_detach) {
  at::Tensor p;
  if (std::isinf(shift) && shift < 0) {
    p = at::ones_like(alphas) + alphas * 0.0;  // every module kept; no gradient to speak of
  } else {
    p = at::sigmoid((alphas - shift) / beta);
  }
  p = p + (p.clamp(kPClamp, 1.0 - kPClamp) - p).detach();
  if (shift_detach) p = p / p.sum() * p.sum().detach();
  return p;
}

at::Tensor relaxed_bernoulli(const at::Tensor& p, const at::Tensor& u) {
  const at::Tensor uc = u.to(p.scalar_type()).clamp(kPClamp, 1.0 - kPClamp);
  return at::sigmoid(at::log(uc / (1.0 - uc)) + at::log(p / (1.0 - p)));
}

Selection select_under_budget(const std::vector<int64_t>& sizes, const std::vector<double>& scores, int64_t budget) {
  DT_CHECK(sizes.size() == scores.size(), "s3delta: one score per candidate");
  std::vector<size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  Selection s;
  std::vector<char> taken(sizes.size(), 0);
  for (size_t i : order) {
    if (s.total + sizes[i] <= budget) {
      s.total += sizes[i];
      taken[i] = 1;
    }
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (taken[i]) s.chosen.push_back(i);
  }
  return s;
}

std::string budget_violation(const std::vector<int64_t>& sizes, const std::vector<size_t>& chosen, int64_t budget) {
  std::vector<char> taken(sizes.size(), 0);
  int64_t total = 0;
  for (size_t i : chosen) {
    DT_CHECK(i < sizes.size() && !taken[i], "s3delta: a chosen index out of range or repeated");
    taken[i] = 1;
    total += sizes[i];
  }
  if (total > budget) return fmt::format("the chosen modules hold {} parameters, over the budget of {}", total, budget);
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (!taken[i] && sizes[i] <= budget - total) {
      return fmt::format("candidate {} ({} parameters) still fits in the {} left of the budget", i, sizes[i],
                         budget - total);
    }
  }
  return "";
}

}  // namespace dt::peft::s3delta
