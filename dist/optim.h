// dist/optim.h — the optimizer step, the learning-rate schedule and global gradient clipping.
//
// Design note: the optimizer sees only the trainable tensors, as (HF name, tensor) pairs whose
// .grad() the backward pass and GradSync filled; so its state (exp_avg, exp_avg_sq, ...) is as small
// as the method's trainable set, which is the point of parameter-efficient fine-tuning. Updates are
// plain ATen ops in the order PyTorch 1.13's single-tensor AdamW (and Hugging Face's Adafactor) apply
// them, so a step matches the reference to float rounding (tests/dist/test_optim.cpp checks 1e-6
// against scripts/make_optim_golden.py). The state is created eagerly (zeros), so it can be saved or
// restored before the first step; state() names every tensor "<param>.<slot>", ready for checkpoints.
// Gradients arrive already averaged over ranks and identical everywhere, so clipping needs no
// communication and every rank takes the same step.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dt::dist {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// ---- optimizers --------------------------------------------------------------------------------

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled: p *= 1 - lr * weight_decay before the Adam update
  // One fused kernel over every parameter of a device and dtype (ATen's _fused_adamw_, what
  // torch.optim.AdamW(fused=True) runs) instead of eight ops per parameter: on a GPU the per-op
  // launches of a 280-tensor T5-base cost more host time than the whole backward. Same update up to
  // float rounding (tests/dist/test_optim.cpp compares both with the reference); false = op by op.
  bool fused = true;
};

// Hugging Face's Adafactor with relative_step=False, scale_parameter=False, warmup_init=False:
// the learning rate comes from the schedule; second moments are factored (row and column means) for
// tensors of 2 or more dimensions; the update's RMS is clipped to clip_threshold.
struct AdafactorOptions {
  double eps = 1e-30;             // added to grad² (HF's eps[0]; eps[1] only serves scale_parameter)
  double clip_threshold = 1.0;
  double decay_rate = -0.8;       // beta2 at step t is 1 - t^decay_rate
  double beta1 = 0.0;             // 0: no first moment (HF's beta1=None)
  double weight_decay = 0.0;      // HF's: p -= lr * weight_decay * p
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual std::string name() const = 0;

  // One update of every parameter that has a gradient (the others are skipped, their step count
  // unchanged, as in PyTorch), at learning rate `lr`.
  void step(double lr);
  // Zeroes the gradients in place (GradSync's buckets may hold views of them).
  void zero_grad();

  const NamedTensors& params() const { return params_; }
  // Steps taken by `param` (all parameters share it unless some had no gradient at some step).
  int64_t step_count(const std::string& param) const;

  // Every state tensor as "<param>.<slot>" (slots: step as a 0-d int64 tensor, exp_avg, exp_avg_sq;
  // Adafactor: exp_avg_sq_row, exp_avg_sq_col or exp_avg_sq, exp_avg when beta1 > 0). The tensors
  // are the live state (no copy): serialize, do not modify.
  NamedTensors state() const;
  // Copies saved state in; throws dt::UsageError on a missing or unknown name or a shape mismatch.
  void set_state(const NamedTensors& saved);
  // When a parameter's entries move (FISH's mask refresh): entry p of every state slot of `param`
  // shaped like it becomes old entry carry[p], or 0 where carry[p] < 0. The step count is kept.
  void permute_state(const std::string& param, const std::vector<int64_t>& carry);

 protected:
  struct ParamState {
    int64_t step = 0;
    NamedTensors slots;  // (slot name, tensor)
    // Fused kernels read the step count from a float tensor on the parameter's device: a copy of
    // `step` (the count checkpoints hold), advanced on the device, refilled when the two part ways
    // (-1: not in step, e.g. after set_state).
    at::Tensor device_step;
    int64_t device_step_value = -1;
    at::Tensor& slot(const std::string& name);
  };
  explicit Optimizer(NamedTensors params);
  virtual void update(at::Tensor& param, const at::Tensor& grad, ParamState& state, double lr) = 0;
  // Updates the parameters `ready` (indices into params_, each with a gradient, step counts already
  // advanced); by default one update() each.
  virtual void update_all(const std::vector<size_t>& ready, double lr);

  NamedTensors params_;
  std::vector<ParamState> states_;
};

class AdamW : public Optimizer {
 public:
  AdamW(NamedTensors params, AdamWOptions options = {});
  std::string name() const override { return "adamw"; }
  const AdamWOptions& options() const { return options_; }

 private:
  void update(at::Tensor& param, const at::Tensor& grad, ParamState& state, double lr) override;
  void update_all(const std::vector<size_t>& ready, double lr) override;
  AdamWOptions options_;
};

class Adafactor : public Optimizer {
 public:
  Adafactor(NamedTensors params, AdafactorOptions options = {});
  std::string name() const override { return "adafactor"; }
  const AdafactorOptions& options() const { return options_; }

 private:
  void update(at::Tensor& param, const at::Tensor& grad, ParamState& state, double lr) override;
  AdafactorOptions options_;
};

struct OptimizerOptions {
  std::string name = "adamw";  // adamw | adafactor
  AdamWOptions adamw;
  AdafactorOptions adafactor;
};
// Throws dt::UsageError for an unknown name.
std::unique_ptr<Optimizer> make_optimizer(NamedTensors params, const OptimizerOptions& options);

// ---- learning-rate schedule --------------------------------------------------------------------

enum class LrScheduleKind { Constant, Linear, Cosine };
// "constant" | "linear" | "cosine"; throws dt::UsageError otherwise.
LrScheduleKind parse_lr_schedule(const std::string& name);

// Hugging Face's get_{constant,linear,cosine}_schedule_with_warmup: `step` is the number of optimizer
// steps already taken (0 for the first), the rate rises linearly from 0 over warmup_steps, then stays
// (constant) or falls to 0 at total_steps, linearly or along a half cosine.
struct LrSchedule {
  LrScheduleKind kind = LrScheduleKind::Linear;
  double base_lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // unused by Constant
  double lr(int64_t step) const;
};

// ---- gradient clipping -------------------------------------------------------------------------

// The L2 norm of all gradients together (computed in float64), returned before clipping; if it
// exceeds max_norm > 0, every gradient is scaled by max_norm / (norm + 1e-6) (torch's
// clip_grad_norm_). max_norm <= 0 only measures. Parameters without a gradient are skipped.
double clip_grad_norm(const NamedTensors& params, double max_norm);

}  // namespace dt::dist
