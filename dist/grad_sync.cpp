#include <c10/core/GradMode.h>
#include "dist/grad_sync.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <mutex>

#include "util/error.h"
#include "util/log.h"

namespace dt::dist {

// ---------------------------------------------------------------------------- names

Compression parse_compression(const std::string& name) {
  if (name == "none") return Compression::None;
  if (name == "bf16") return Compression::BF16;
  if (name == "fp16") return Compression::FP16;
  throw_usage_error("unknown gradient compression '" + name + "' (expected none, bf16 or fp16)");
}

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::None: return "none";
    case Compression::BF16: return "bf16";
    case Compression::FP16: return "fp16";
  }
  return "?";
}

// ---------------------------------------------------------------------------- comm hooks

namespace {

class ThenWork : public comm::Work {
 public:
  ThenWork(comm::WorkPtr inner, std::function<void()> then)
      : inner_(std::move(inner)), then_(std::move(then)) {
    set_accounting(inner_->payload_bytes(), inner_->collectives());
  }
  bool is_completed() override { return inner_->is_completed(); }
  bool wait(std::chrono::milliseconds timeout) override {
    if (!inner_->wait(timeout)) return false;
    // Two threads may wait on one Work: call_once runs the continuation exactly once, and a second
    // waiter returns only after it has finished (its result is what the waiter came for). If it
    // throws, the next wait() tries again.
    std::call_once(then_once_, then_);
    return true;
  }
  std::exception_ptr exception() const override { return inner_->exception(); }

 private:
  comm::WorkPtr inner_;
  std::function<void()> then_;
  std::once_flag then_once_;
};

}  // namespace

comm::WorkPtr then_work(comm::WorkPtr inner, std::function<void()> then) {
  return std::make_shared<ThenWork>(std::move(inner), std::move(then));
}

CommHook allreduce_hook() {
  return [](comm::Communicator& comm, Bucket& b) {
    return comm.all_reduce(b.buffer, {comm::ReduceOp::Average});
  };
}

CommHook make_compression_hook(Compression c) {
  if (c == Compression::None) return allreduce_hook();
  const at::ScalarType low_type = c == Compression::BF16 ? at::kBFloat16 : at::kHalf;
  // One 16-bit buffer per bucket, allocated on first use and reused every step.
  auto lows = std::make_shared<std::vector<at::Tensor>>();
  return [low_type, lows](comm::Communicator& comm, Bucket& b) {
    if (lows->size() <= b.index) lows->resize(b.index + 1);
    at::Tensor& low = (*lows)[b.index];
    if (!low.defined() || low.numel() != b.buffer.numel())
      low = at::empty({b.buffer.numel()}, b.buffer.options().dtype(low_type));
    // Divide in fp32 before narrowing: the 16-bit sum of averages cannot overflow fp16 where the
    // sum of raw gradients could, and the result needs no scaling afterwards.
    b.buffer.div_(comm.size());
    low.copy_(b.buffer);
    comm::WorkPtr work = comm.all_reduce(low, {comm::ReduceOp::Sum});
    at::Tensor out = b.buffer;
    at::Tensor in = low;
    return then_work(std::move(work), [out, in]() mutable { out.copy_(in); });
  };
}

CommHook make_dense_scatter_hook(std::map<size_t, DenseScatter> dense) {
  auto wires = std::make_shared<std::vector<at::Tensor>>();  // one per bucket, reused every step
  auto shared = std::make_shared<const std::map<size_t, DenseScatter>>(std::move(dense));
  return [shared, wires](comm::Communicator& comm, Bucket& b) {
    // The wire holds the bucket's parameters in order, a dense one as its whole tensor.
    std::vector<int64_t> starts, lengths;
    int64_t total = 0;
    for (size_t i = 0; i < b.params.size(); ++i) {
      const auto it = shared->find(b.params[i]);
      const int64_t n = it == shared->end() ? b.views[i].numel() : it->second.numel;
      starts.push_back(total);
      lengths.push_back(n);
      total += n;
    }
    if (wires->size() <= b.index) wires->resize(b.index + 1);
    at::Tensor& wire = (*wires)[b.index];
    if (!wire.defined() || wire.numel() != total) wire = at::empty({total}, b.buffer.options());
    wire.zero_();
    for (size_t i = 0; i < b.params.size(); ++i) {
      at::Tensor segment = wire.narrow(0, starts[i], lengths[i]);
      const auto it = shared->find(b.params[i]);
      if (it == shared->end()) {
        segment.copy_(b.views[i].reshape({-1}));
      } else {
        DT_CHECK(it->second.positions.numel() == b.views[i].numel(),
                 fmt::format("dense sync: {} positions for a parameter of {} values",
                             it->second.positions.numel(), b.views[i].numel()));
        segment.index_copy_(0, it->second.positions, b.views[i].reshape({-1}));
      }
    }
    comm::WorkPtr work = comm.all_reduce(wire, {comm::ReduceOp::Average});
    at::Tensor in = wire;
    std::vector<at::Tensor> views = b.views;
    std::vector<size_t> params = b.params;
    return then_work(std::move(work), [shared, in, views, params, starts, lengths]() mutable {
      for (size_t i = 0; i < params.size(); ++i) {
        at::Tensor segment = in.narrow(0, starts[i], lengths[i]);
        const auto it = shared->find(params[i]);
        at::Tensor flat = views[i].view({-1});
        flat.copy_(it == shared->end() ? segment : segment.index_select(0, it->second.positions));
      }
    });
  };
}

// ---------------------------------------------------------------------------- autograd hook

namespace {

// Runs after AccumulateGrad of one parameter: its gradient for this backward pass is final.
class GradReadyHook : public torch::autograd::FunctionPostHook {
 public:
  GradReadyHook(GradSync* owner, size_t index) : owner_(owner), index_(index) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    owner_->on_grad_ready(index_);
    return outputs;
  }

 private:
  GradSync* owner_;
  size_t index_;
};

constexpr size_t kNoBucket = static_cast<size_t>(-1);

size_t mib_to_bytes(double mb, const char* what) {
  DT_CHECK(mb > 0, fmt::format("{} must be positive (got {} MiB)", what, mb),
           "set --dist.bucket-mb to a positive number");
  return static_cast<size_t>(mb * 1024.0 * 1024.0);
}

}  // namespace

// ---------------------------------------------------------------------------- GradSync

GradSync::GradSync(comm::Communicator& comm, std::vector<std::pair<std::string, at::Tensor>> params,
                   GradSyncOptions options)
    : comm_(comm), params_(std::move(params)), options_(options),
      hook_(make_compression_hook(options.compress)) {
  std::vector<TensorSpec> specs;
  specs.reserve(params_.size());
  for (const auto& [name, p] : params_) {
    DT_CHECK(p.defined(), fmt::format("trainable parameter '{}' is undefined", name));
    DT_CHECK(p.requires_grad() && p.is_leaf(),
             fmt::format("trainable parameter '{}' must be a leaf tensor with requires_grad", name));
    DT_CHECK(p.scalar_type() == at::kFloat,
             fmt::format("trainable parameter '{}' is {}; GradSync supports float32 only", name,
                         c10::toString(p.scalar_type())),
             "keep trainable parameters in float32 (compress the gradients with --dist.compress)");
    DT_CHECK(p.is_contiguous(),
             fmt::format("trainable parameter '{}' is not contiguous", name),
             "make the parameter contiguous before building GradSync");
    DT_CHECK(p.device() == params_.front().second.device(),
             fmt::format("trainable parameter '{}' is on {} but '{}' is on {}", name,
                         p.device().str(), params_.front().first,
                         params_.front().second.device().str()));
    specs.push_back({name, p.numel(), static_cast<size_t>(p.element_size()), p.scalar_type()});
  }
  specs_ = assign_buckets(specs, mib_to_bytes(options_.first_bucket_cap_mb, "first bucket cap"),
                          mib_to_bytes(options_.bucket_cap_mb, "bucket cap"));

  bucket_of_.assign(params_.size(), kNoBucket);
  slot_of_.assign(params_.size(), 0);
  param_ready_.assign(params_.size(), 0);
  c10::NoGradGuard no_grad;
  buckets_.resize(specs_.size());
  for (size_t b = 0; b < specs_.size(); ++b) {
    const BucketSpec& spec = specs_[b];
    Bucket& bucket = buckets_[b];
    bucket.index = b;
    bucket.params = spec.tensors;
    bucket.offsets = spec.offsets;
    bucket.buffer = at::zeros({spec.numel}, params_[spec.tensors.front()].second.options()
                                                .requires_grad(false));
    for (size_t s = 0; s < spec.tensors.size(); ++s) {
      const size_t i = spec.tensors[s];
      at::Tensor& p = params_[i].second;
      // An alias made with set_ rather than narrow(): it is not an autograd view, so
      // optimizer.zero_grad() (detach_ + zero_) works on it, as on any gradient.
      at::Tensor view = at::empty({0}, bucket.buffer.options())
                            .set_(bucket.buffer.storage(), spec.offsets[s], p.sizes(), p.strides());
      if (p.grad().defined()) view.copy_(p.grad());
      p.mutable_grad() = view;
      bucket.views.push_back(view);
      bucket_of_[i] = b;
      slot_of_[i] = s;
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (bucket_of_[i] == kNoBucket) continue;  // empty tensor: nothing to reduce
    std::shared_ptr<torch::autograd::Node> acc =
        torch::autograd::impl::grad_accumulator(params_[i].second);
    DT_CHECK(acc != nullptr,
             fmt::format("trainable parameter '{}' has no gradient accumulator", params_[i].first));
    hook_keys_.push_back(acc->add_post_hook(std::make_unique<GradReadyHook>(this, i)));
    accumulators_.push_back(std::move(acc));
  }
  reset_step();
}

GradSync::~GradSync() {
  // The backend writes into the buffers until a Work completes: never free them under it.
  for (Bucket& b : buckets_) {
    if (!b.work) continue;
    try {
      b.work->wait();
    } catch (const std::exception& e) {
      log::error("GradSync: bucket {} failed while shutting down: {}", b.index, e.what());
    }
  }
  for (size_t k = 0; k < accumulators_.size(); ++k) accumulators_[k]->del_post_hook(hook_keys_[k]);
}

uint64_t GradSync::grad_bytes() const {
  uint64_t bytes = 0;
  for (const Bucket& b : buckets_) bytes += static_cast<uint64_t>(b.buffer.numel()) * 4;
  return bytes;
}

void GradSync::on_grad_ready(size_t i) {
  const size_t b = bucket_of_[i];
  Bucket& bucket = buckets_[b];
  const at::Tensor& view = bucket.views[slot_of_[i]];
  at::Tensor& p = params_[i].second;
  // AccumulateGrad adds in place into an existing .grad() unless it cannot (the grad was reset to
  // undefined, or create_graph=true); then .grad() is a new tensor holding the full gradient.
  if (!p.grad().is_same(view)) {
    if (grad_copies_ == 0)
      log::info("warning: GradSync: the gradient of '{}' was not accumulated into its bucket; "
                "copying it in (slower; do not set gradients to None between steps)",
                params_[i].first);
    ++grad_copies_;
    c10::NoGradGuard no_grad;
    if (p.grad().defined())
      view.copy_(p.grad());
    else
      view.zero_();
    p.mutable_grad() = view;
  }
  if (!sync_) return;
  progress();
  DT_CHECK(!param_ready_[i],
           fmt::format("parameter '{}' received a second gradient in one step with sync on",
                       params_[i].first),
           "call GradSync::finish() after each synchronized backward, or set_sync(false) for "
           "the backward passes before the last of a step");
  param_ready_[i] = 1;
  DT_CHECK(bucket.pending > 0, "internal: bucket pending count underflow");
  if (--bucket.pending == 0) {
    bucket.ready = true;
    launch_ready_in_order();
  }
}

void GradSync::launch_ready_in_order() {
  const bool in_backward = !finishing_;
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].ready) {
    Bucket& b = buckets_[next_launch_++];
    launch(b);
    if (in_backward) ++step_stats_.launched_in_backward;
  }
}

void GradSync::progress() {
  // MPI moves a non-blocking collective forward only inside MPI calls (there is no progress thread
  // by default): testing the oldest in-flight Work from each hook lets launched buckets travel
  // while backward computes, instead of all waiting for finish().
  while (poll_from_ < next_launch_ && buckets_[poll_from_].work->is_completed()) ++poll_from_;
}

void GradSync::launch(Bucket& b) {
  if (options_.check_finite) check_bucket_finite(b);
  b.work = hook_(comm_, b);
  DT_CHECK(b.work != nullptr, fmt::format("the comm hook returned no Work for bucket {}", b.index));
  // From the Work itself, not from the communicator's counters: another thread (a second GradSync,
  // an evaluation all-reduce) may issue collectives on the same communicator meanwhile.
  step_stats_.bytes += b.work->payload_bytes();
  step_stats_.collectives += b.work->collectives();
}

void GradSync::check_bucket_finite(const Bucket& b) {
  if (at::isfinite(b.buffer).all().item<bool>()) return;
  for (size_t s = 0; s < b.views.size(); ++s)
    if (!at::isfinite(b.views[s]).all().item<bool>()) nonfinite_.push_back(b.params[s]);
}

void GradSync::finish() {
  const auto t0 = std::chrono::steady_clock::now();
  // Where wait() does not block the host (nccl), the compute stream's own time in here is what counts.
  std::unique_ptr<comm::StreamTimer> device_timer = comm_.start_stream_timer();
  finishing_ = true;
  for (Bucket& b : buckets_) b.ready = true;
  try {
    launch_ready_in_order();
    for (Bucket& b : buckets_) b.work->wait();
    if (device_timer) device_timer->stop();
  } catch (...) {
    finishing_ = false;
    throw;
  }
  finishing_ = false;
  std::string nonfinite_error = options_.check_finite ? agree_finite() : std::string();
  step_stats_.buckets = buckets_.size();
  step_stats_.exposed_comm_s = device_timer ? device_timer->seconds()
                                            : std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  last_stats_ = step_stats_;
  reset_step();
  if (!nonfinite_error.empty())
    DT_FAIL(nonfinite_error, "check the data and learning rate of that rank; the step was not "
                             "taken on any rank");
}

std::string GradSync::agree_finite() {
  // Every rank contributes (first bad parameter or -1, number of bad parameters); every rank then
  // raises the same error, so nobody waits for a collective that a failed rank never issues.
  // NCCL takes GPU tensors only (MPI stages all-reduces only: host tensors there).
  at::Tensor mine = at::empty({2}, at::kLong);
  mine[0] = nonfinite_.empty() ? int64_t{-1} : static_cast<int64_t>(nonfinite_.front());
  mine[1] = static_cast<int64_t>(nonfinite_.size());
  if (comm_.backend_name() == "nccl") mine = mine.to(params_.front().second.device());
  at::Tensor all = at::empty({2 * comm_.size()}, mine.options());
  comm_.all_gather(mine, all)->wait();
  all = all.to(at::kCPU);
  std::string ranks;
  for (int r = 0; r < comm_.size(); ++r) {
    const int64_t first = all[2 * r].item<int64_t>();
    const int64_t count = all[2 * r + 1].item<int64_t>();
    if (count == 0) continue;
    if (!ranks.empty()) ranks += "; ";
    ranks += fmt::format("rank {} in '{}'", r, params_.at(static_cast<size_t>(first)).first);
    if (count > 1) ranks += fmt::format(" and {} more", count - 1);
  }
  if (ranks.empty()) return {};
  return "non-finite gradient (NaN/Inf) before all-reduce: " + ranks;
}

void GradSync::reset_step() {
  for (Bucket& b : buckets_) {
    b.pending = b.params.size();
    b.ready = false;
    b.work.reset();
  }
  std::fill(param_ready_.begin(), param_ready_.end(), 0);
  next_launch_ = 0;
  poll_from_ = 0;
  nonfinite_.clear();
  step_stats_ = {};
}

void GradSync::zero_grad() {
  DT_CHECK(next_launch_ == 0,
           "GradSync::zero_grad() while buckets are in flight", "call finish() first");
  c10::NoGradGuard no_grad;
  for (Bucket& b : buckets_) {
    b.buffer.zero_();
    for (size_t s = 0; s < b.params.size(); ++s) {
      at::Tensor& p = params_[b.params[s]].second;
      if (!p.grad().is_same(b.views[s])) p.mutable_grad() = b.views[s];
    }
  }
}

}  // namespace dt::dist
