// dist/optim.cpp — see optim.h.
#include "dist/optim.h"

#include <ATen/TensorOperators.h>
#include <c10/core/GradMode.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "util/error.h"

namespace dt::dist {

// ---- Optimizer ---------------------------------------------------------------------------------

Optimizer::Optimizer(NamedTensors params) : params_(std::move(params)), states_(params_.size()) {
  std::map<std::string, int> seen;
  for (const auto& [name, p] : params_) {
    DT_CHECK(p.defined() && p.is_floating_point(),
             "optimizer: parameter '" + name + "' is not a defined floating-point tensor");
    DT_CHECK(seen[name]++ == 0, "optimizer: parameter '" + name + "' given twice");
  }
}

at::Tensor& Optimizer::ParamState::slot(const std::string& name) {
  for (auto& [n, t] : slots)
    if (n == name) return t;
  DT_FAIL("optimizer: no state slot '" + name + "'");
}

void Optimizer::step(double lr) {
  c10::NoGradGuard no_grad;
  std::vector<size_t> ready;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].second;
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    DT_CHECK(g.sizes() == p.sizes(), "optimizer: gradient of '" + params_[i].first +
                                         "' has another shape than the parameter");
    states_[i].step += 1;
    ready.push_back(i);
  }
  update_all(ready, lr);
}

void Optimizer::update_all(const std::vector<size_t>& ready, double lr) {
  for (size_t i : ready) update(params_[i].second, params_[i].second.grad(), states_[i], lr);
}

void Optimizer::zero_grad() {
  for (auto& [name, p] : params_) {
    if (p.grad().defined()) p.mutable_grad().zero_();
  }
}

int64_t Optimizer::step_count(const std::string& param) const {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].first == param) return states_[i].step;
  DT_FAIL("optimizer: no parameter '" + param + "'");
}

NamedTensors Optimizer::state() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].first;
    out.emplace_back(name + ".step", at::scalar_tensor(states_[i].step, at::kLong));
    for (const auto& [slot, t] : states_[i].slots) out.emplace_back(name + "." + slot, t);
  }
  return out;
}

void Optimizer::permute_state(const std::string& param, const std::vector<int64_t>& carry) {
  std::vector<int64_t> to, from;
  for (size_t p = 0; p < carry.size(); ++p) {
    if (carry[p] >= 0) {
      to.push_back(static_cast<int64_t>(p));
      from.push_back(carry[p]);
    }
  }
  c10::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].first != param) continue;
    DT_CHECK(params_[i].second.numel() == static_cast<int64_t>(carry.size()),
             "optimizer: permute_state of '" + param + "' with " + std::to_string(carry.size()) + " entries");
    for (auto& [slot, t] : states_[i].slots) {
      if (t.sizes() != params_[i].second.sizes()) continue;  // e.g. Adafactor's factored rows/columns
      const at::Tensor old = t.clone();
      t.zero_();
      if (!to.empty()) {
        t.index_put_({at::tensor(to, at::kLong).to(t.device())},
                     old.index_select(0, at::tensor(from, at::kLong).to(t.device())));
      }
    }
    return;
  }
  DT_FAIL("optimizer: no parameter '" + param + "'");
}

void Optimizer::set_state(const NamedTensors& saved) {
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [name, t] : saved) by_name[name] = &t;
  const NamedTensors expected = state();
  for (const auto& [name, t] : saved) {
    bool known = false;
    for (const auto& e : expected) known = known || e.first == name;
    if (!known)
      throw_usage_error("optimizer state '" + name + "' matches no trainable parameter of " +
                        this->name() + " (was the checkpoint written with another method?)");
  }
  c10::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].first;
    auto it = by_name.find(name + ".step");
    if (it == by_name.end()) throw_usage_error("optimizer state lacks '" + name + ".step'");
    states_[i].step = it->second->item<int64_t>();
    states_[i].device_step_value = -1;
    for (auto& [slot, t] : states_[i].slots) {
      auto s = by_name.find(name + "." + slot);
      if (s == by_name.end()) throw_usage_error("optimizer state lacks '" + name + "." + slot + "'");
      if (s->second->sizes() != t.sizes())
        throw_usage_error("optimizer state '" + name + "." + slot + "' has shape " +
                          c10::str(s->second->sizes()) + ", the parameter needs " +
                          c10::str(t.sizes()));
      t.copy_(*s->second);
    }
  }
}

// ---- AdamW -------------------------------------------------------------------------------------

AdamW::AdamW(NamedTensors params, AdamWOptions options)
    : Optimizer(std::move(params)), options_(options) {
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].second;
    states_[i].slots = {{"exp_avg", at::zeros_like(p, at::MemoryFormat::Preserve)},
                        {"exp_avg_sq", at::zeros_like(p, at::MemoryFormat::Preserve)}};
  }
}

// torch/optim/adamw.py `_single_tensor_adamw` (1.13), op for op.
void AdamW::update(at::Tensor& param, const at::Tensor& grad, ParamState& state, double lr) {
  const AdamWOptions& o = options_;
  at::Tensor& exp_avg = state.slot("exp_avg");
  at::Tensor& exp_avg_sq = state.slot("exp_avg_sq");
  if (o.weight_decay != 0.0) param.mul_(1.0 - lr * o.weight_decay);
  exp_avg.mul_(o.beta1).add_(grad, 1.0 - o.beta1);
  exp_avg_sq.mul_(o.beta2).addcmul_(grad, grad, 1.0 - o.beta2);
  const auto step = static_cast<double>(state.step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, step);
  const double step_size = lr / bias_correction1;
  const at::Tensor denom = (exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(o.eps);
  param.addcdiv_(exp_avg, denom, -step_size);
}

void AdamW::update_all(const std::vector<size_t>& ready, double lr) {
  if (!options_.fused) return Optimizer::update_all(ready, lr);
  const AdamWOptions& o = options_;
  // One kernel per (device, dtype): the fused op wants every list on one device in one dtype.
  std::map<std::pair<std::string, int>, std::vector<size_t>> groups;
  for (size_t i : ready) {
    const at::Tensor& p = params_[i].second;
    groups[{p.device().str(), static_cast<int>(p.scalar_type())}].push_back(i);
  }
  for (const auto& [key, members] : groups) {
    std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps, to_advance;
    for (size_t i : members) {
      at::Tensor& p = params_[i].second;
      ParamState& state = states_[i];
      at::Tensor& step = state.device_step;
      if (!step.defined()) step = at::zeros({}, p.options().dtype(at::kFloat));
      // The kernel advances nothing itself; torch adds 1 to every step tensor first.
      if (state.device_step_value == state.step - 1) {
        to_advance.push_back(step);
      } else {
        step.fill_(static_cast<double>(state.step));
      }
      state.device_step_value = state.step;
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(states_[i].slot("exp_avg"));
      exp_avg_sqs.push_back(states_[i].slot("exp_avg_sq"));
      steps.push_back(step);
    }
    if (!to_advance.empty()) at::_foreach_add_(to_advance, 1.0);
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr, o.beta1,
                      o.beta2, o.weight_decay, o.eps, /*amsgrad=*/false, /*maximize=*/false);
  }
}

// ---- Adafactor ---------------------------------------------------------------------------------

namespace {

bool factored(const at::Tensor& p) { return p.dim() >= 2; }

// Root mean square of a tensor, as a 0-d tensor (stays on the device).
at::Tensor rms(const at::Tensor& t) {
  return t.norm(2) / std::sqrt(static_cast<double>(t.numel()));
}

}  // namespace

Adafactor::Adafactor(NamedTensors params, AdafactorOptions options)
    : Optimizer(std::move(params)), options_(options) {
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].second;
    auto& slots = states_[i].slots;
    if (options_.beta1 > 0.0) slots.emplace_back("exp_avg", at::zeros_like(p));
    if (factored(p)) {
      std::vector<int64_t> row(p.sizes().begin(), p.sizes().end() - 1);  // all but the last dim
      std::vector<int64_t> col(p.sizes().begin(), p.sizes().end() - 2);  // all but the one before
      col.push_back(p.size(-1));
      slots.emplace_back("exp_avg_sq_row", at::zeros(row, p.options()));
      slots.emplace_back("exp_avg_sq_col", at::zeros(col, p.options()));
    } else {
      slots.emplace_back("exp_avg_sq", at::zeros_like(p));
    }
  }
}

void Adafactor::update(at::Tensor& param, const at::Tensor& grad, ParamState& state, double lr) {
  const AdafactorOptions& o = options_;
  const double beta2t = 1.0 - std::pow(static_cast<double>(state.step), o.decay_rate);
  const at::Tensor grad_sq = grad.pow(2) + o.eps;
  at::Tensor update;
  if (factored(param)) {
    at::Tensor& row = state.slot("exp_avg_sq_row");
    at::Tensor& col = state.slot("exp_avg_sq_col");
    row.mul_(beta2t).add_(grad_sq.mean(-1), 1.0 - beta2t);
    col.mul_(beta2t).add_(grad_sq.mean(-2), 1.0 - beta2t);
    // Rank-1 estimate of E[g²]: row · col / mean(row), applied as rsqrt factors.
    const at::Tensor r_factor = (row / row.mean(-1, /*keepdim=*/true)).rsqrt_().unsqueeze(-1);
    const at::Tensor c_factor = col.unsqueeze(-2).rsqrt();
    update = (r_factor * c_factor).mul_(grad);
  } else {
    at::Tensor& v = state.slot("exp_avg_sq");
    v.mul_(beta2t).add_(grad_sq, 1.0 - beta2t);
    update = v.rsqrt().mul_(grad);
  }
  update.div_((rms(update) / o.clip_threshold).clamp_(1.0));
  update.mul_(lr);
  if (o.beta1 > 0.0) {
    at::Tensor& m = state.slot("exp_avg");
    m.mul_(o.beta1).add_(update, 1.0 - o.beta1);
    update = m;
  }
  if (o.weight_decay != 0.0) param.add_(param, -o.weight_decay * lr);
  param.add_(-update);
}

std::unique_ptr<Optimizer> make_optimizer(NamedTensors params, const OptimizerOptions& options) {
  if (options.name == "adamw") return std::make_unique<AdamW>(std::move(params), options.adamw);
  if (options.name == "adafactor")
    return std::make_unique<Adafactor>(std::move(params), options.adafactor);
  throw_usage_error("unknown optimizer '" + options.name + "' (known: adamw, adafactor)");
}

// ---- schedule ----------------------------------------------------------------------------------

LrScheduleKind parse_lr_schedule(const std::string& name) {
  if (name == "constant") return LrScheduleKind::Constant;
  if (name == "linear") return LrScheduleKind::Linear;
  if (name == "cosine") return LrScheduleKind::Cosine;
  throw_usage_error("unknown learning-rate schedule '" + name + "' (known: constant, linear, cosine)");
}

constexpr double kPi = 3.14159265358979323846;

double LrSchedule::lr(int64_t step) const {
  const auto s = static_cast<double>(step);
  if (step < warmup_steps) return base_lr * s / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  if (kind == LrScheduleKind::Constant) return base_lr;
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  if (kind == LrScheduleKind::Linear)
    return base_lr * std::max(0.0, static_cast<double>(total_steps - step) / span);
  const double progress = static_cast<double>(step - warmup_steps) / span;
  return base_lr * std::max(0.0, 0.5 * (1.0 + std::cos(kPi * progress)));
}

// ---- clipping ----------------------------------------------------------------------------------

double clip_grad_norm(const NamedTensors& params, double max_norm) {
  c10::NoGradGuard no_grad;
  // Per-tensor norms on the gradients' device (one foreach launch per device and dtype where ATen
  // has the fast path), then one norm of norms: a single host sync.
  std::map<std::pair<std::string, int>, std::vector<at::Tensor>> grads;
  for (const auto& [name, p] : params) {
    const at::Tensor& g = p.grad();
    if (g.defined()) grads[{g.device().str(), static_cast<int>(g.scalar_type())}].push_back(g);
  }
  if (grads.empty()) return 0.0;
  std::vector<at::Tensor> norms;  // one per group, brought to the host together
  for (const auto& [key, group] : grads) {
    norms.push_back(at::linalg_vector_norm(at::stack(at::_foreach_norm(group, 2, at::kDouble)), 2).cpu());
  }
  const double norm = at::linalg_vector_norm(at::stack(norms), 2).item<double>();
  if (max_norm > 0.0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
      for (auto& [key, group] : grads) at::_foreach_mul_(group, coef);
    }
  }
  return norm;
}

}  // namespace dt::dist
