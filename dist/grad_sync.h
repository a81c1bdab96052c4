// dist/grad_sync.h — averaging gradients over ranks, overlapped with backward.
//
// Design note (after c10d's Reducer with gradient_as_bucket_view and DDP comm hooks):
//   - The trainable parameters are grouped into buckets by assign_buckets (dist/bucket.h). Each
//     bucket owns one flat fp32 buffer, and every parameter's .grad() IS a slice of it: autograd
//     accumulates into the slice in place, so no gradient is ever copied into a bucket.
//   - A post-hook on each parameter's gradient accumulator (AccumulateGrad) fires once the
//     parameter's gradient of this backward pass is final; it lowers its bucket's pending count, and
//     a bucket whose count reaches zero is handed to the comm hook (async all_reduce, Average) while
//     backward goes on. Collectives must be issued in the same order on every rank, so buckets launch
//     strictly in index order: a ready bucket whose predecessor has not launched waits for it.
//   - finish() (before the optimizer step) launches whatever has not launched (parameters unused in
//     this step: their zero gradient is still reduced, so all ranks issue the same collectives),
//     waits for every Work and lets the hook finish its work (e.g. decompress). Its duration is the
//     communication that backward did not hide: `exposed_comm_s` — the host's wall time where wait()
//     blocks the host (mpi); on NCCL, whose wait() only orders the compute stream, the device time the
//     compute stream spends in finish() (two timing events around it, Communicator::start_stream_timer).
//   - Gradient accumulation: with set_sync(false) the hooks do nothing and gradients simply add up
//     in the buffers; finish() always reduces everything, so the caller sets sync back on for the
//     last micro-step (to overlap) and calls finish() once per optimizer step.
//   - The comm hook is the point where compression plugs in: the default all-reduces the fp32
//     buffer (Average); make_compression_hook(BF16|FP16) reduces a 16-bit copy instead (pre-divided
//     by the world size so fp16 cannot overflow) and converts back into the fp32 buffer on wait.
//   - check_finite: each bucket is checked just before launch; a bad rank does NOT throw at once
//     (its peers would hang in their collectives): finish() all-gathers (first bad parameter, count)
//     and every rank throws the same error, naming the rank(s) and the parameter.
// Parameters must be contiguous float32 on one device. The gradient hooks run on the thread autograd runs
// the parameters' device on: the caller of backward() for CPU tensors, the engine's worker thread for
// CUDA tensors (one backward at a time, so GradSync itself is never entered concurrently); the MPI
// backend funnels its calls through one thread where MPI_THREAD_MULTIPLE is missing (comm/mpi.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "dist/bucket.h"

namespace torch::autograd {
struct Node;
}

namespace dt::dist {

enum class Compression { None, BF16, FP16 };
// "none" | "bf16" | "fp16"; anything else -> dt::UsageError.
Compression parse_compression(const std::string& name);
const char* compression_name(Compression c);

struct GradSyncOptions {
  double bucket_cap_mb = 25.0;       // --dist.bucket-mb
  double first_bucket_cap_mb = 1.0;  // small first bucket so communication starts early
  Compression compress = Compression::None;
  bool check_finite = false;
};

struct Bucket {
  size_t index = 0;
  at::Tensor buffer;                 // flat fp32, numel = sum of its parameters' numel
  std::vector<size_t> params;        // indices into GradSync's parameter list, in buffer order
  std::vector<int64_t> offsets;      // element offset of each parameter in `buffer`
  std::vector<at::Tensor> views;     // views[i] aliases buffer[offsets[i] : +numel], shaped as the param
  size_t pending = 0;                // parameters whose gradient is not final yet in this step
  bool ready = false;                // all gradients final (or forced by finish())
  comm::WorkPtr work;
};

// Hands a ready bucket to the communicator; returns the in-flight Work. Must issue the same
// collectives on every rank. May modify bucket.buffer; after Work::wait() returns, bucket.buffer
// must hold the average over ranks.
using CommHook = std::function<comm::WorkPtr(comm::Communicator&, Bucket&)>;

// The default hook: all_reduce(Average) of the fp32 buffer.
CommHook allreduce_hook();
// 16-bit compression: None returns allreduce_hook().
CommHook make_compression_hook(Compression c);
// DDP-style dense sync of values-over-indices parameters (the baseline FISH's own code is: a DDP model
// whose masked gradients travel as whole tensors, zeros included). `dense[i]` says that parameter i
// (GradSync's index) holds the values of a dense tensor of `numel` elements at flat `positions`: the
// hook scatters them into a zeroed fp32 tensor of that size, all-reduces the whole tensor (Average)
// and gathers the positions back. The result equals allreduce_hook()'s; only the bytes differ.
struct DenseScatter {
  at::Tensor positions;  // int64, 1-D, one per element of the parameter, on the parameter's device
  int64_t numel = 0;
};
CommHook make_dense_scatter_hook(std::map<size_t, DenseScatter> dense);
// A Work that runs `then` once, on the first successful wait() of `inner` (the continuation of a
// hook, e.g. converting a 16-bit result back). is_completed() reports `inner`'s state.
comm::WorkPtr then_work(comm::WorkPtr inner, std::function<void()> then);

struct GradSyncStats {
  uint64_t bytes = 0;        // payload bytes handed to collectives by the comm hooks (this rank)
  uint64_t collectives = 0;  // collectives issued by the comm hooks
  size_t buckets = 0;
  size_t launched_in_backward = 0;  // buckets launched by autograd hooks (the rest by finish())
  double exposed_comm_s = 0.0;      // finish()'s time (host, or the compute stream's on nccl): communication
                                    // backward did not hide
};

class GradSync {
 public:
  // `params`: the trainable parameters, in registration order (names are for messages).
  GradSync(comm::Communicator& comm, std::vector<std::pair<std::string, at::Tensor>> params,
           GradSyncOptions options = {});
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // Off: backward only accumulates (micro-steps before the last). On (default): buckets launch
  // during backward.
  void set_sync(bool on) { sync_ = on; }
  bool sync() const { return sync_; }

  // Before the optimizer step: launch the rest, wait for all, finish the hooks; checks finiteness.
  // Afterwards every parameter's .grad() holds the average over ranks.
  void finish();
  // Zeroes the bucket buffers (i.e. every gradient), and restores any .grad() that was replaced.
  void zero_grad();

  // Replaces the comm hook (e.g. a test hook wrapping allreduce_hook()).
  void set_comm_hook(CommHook hook) { hook_ = std::move(hook); }

  const GradSyncStats& last_stats() const { return last_stats_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  const std::vector<BucketSpec>& bucket_specs() const { return specs_; }
  const std::string& param_name(size_t i) const { return params_[i].first; }
  size_t num_params() const { return params_.size(); }
  // Times a hook found a .grad() that was not its bucket view (autograd replaced it instead of
  // accumulating in place) and had to copy it in. 0 in normal operation.
  uint64_t grad_copies() const { return grad_copies_; }
  // Bytes of gradient per step (fp32), i.e. what an uncompressed step reduces.
  uint64_t grad_bytes() const;

  // Called by the autograd hook of parameter `i` (public for the hook class only).
  void on_grad_ready(size_t i);

 private:
  void launch_ready_in_order();
  void launch(Bucket& b);
  void progress();
  void check_bucket_finite(const Bucket& b);
  void reset_step();
  std::string agree_finite();  // the error message every rank raises, or empty

  comm::Communicator& comm_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  GradSyncOptions options_;
  std::vector<BucketSpec> specs_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;     // param index -> bucket index
  std::vector<size_t> slot_of_;       // param index -> position within its bucket
  std::vector<char> param_ready_;     // this step
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // kept alive: hooks live there
  std::vector<uintptr_t> hook_keys_;
  CommHook hook_;
  bool sync_ = true;
  bool finishing_ = false;  // launches now come from finish(), not from backward
  size_t next_launch_ = 0;
  size_t poll_from_ = 0;  // oldest launched bucket not known to be complete
  uint64_t grad_copies_ = 0;
  std::vector<size_t> nonfinite_;  // params with a non-finite gradient seen at launch in this step
  GradSyncStats step_stats_;
  GradSyncStats last_stats_;
};

}  // namespace dt::dist
