// comm/communicator.h — how bytes move between ranks.
//
// Design note (after PyTorch c10d's Backend/Work): one method per collective, each taking tensors and
// a small options struct with defaults, each returning an asynchronous Work handle. The contract of
// every call: all ranks call the same collectives in the same order with matching shapes and dtypes
// (as MPI and NCCL require); a mismatch that can be detected raises dt::Error instead of hanging.
// Tensors must be contiguous and of float32, float64, bfloat16, float16, int32 or int64; the backend
// reads and writes them in place until the Work completes, so callers keep them alive until wait().
//
// Counters: every collective adds its call and its payload bytes (the bytes this rank hands to the
// collective: numel × element size of the input) to per-collective counters, readable and resettable
// (atomic: collectives may be issued from several threads). Each Work also carries its own payload
// bytes, so a caller that needs the bytes of the collectives *it* issued (GradSync's per-step metrics)
// sums its Works instead of differencing counters that other threads also move.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace dt::comm {

enum class ReduceOp { Sum, Average };

enum class Collective { AllReduce, Broadcast, AllGather, AllGatherV, ReduceScatter, Barrier };
inline constexpr int kNumCollectives = 6;
const char* collective_name(Collective c);

struct AllReduceOptions {
  ReduceOp op = ReduceOp::Sum;
};
struct BroadcastOptions {
  int root = 0;
};
struct ReduceScatterOptions {
  ReduceOp op = ReduceOp::Sum;
};

// An in-flight collective. wait() rethrows the collective's error, if any. Several threads may wait
// on one Work.
class Work {
 public:
  virtual ~Work() = default;
  // Non-blocking: has the collective finished (successfully or not)?
  virtual bool is_completed() = 0;
  // Blocks until the collective's result may be used. Returns false if `timeout` passed first (the
  // collective is still in flight); a zero timeout means no limit. Throws dt::Error if the collective
  // failed. Under NCCL a zero-timeout wait does not block the host: it orders the caller's CUDA stream
  // after the collective (as c10d's Work::wait does), which is what "may be used" means on a GPU.
  virtual bool wait(std::chrono::milliseconds timeout = std::chrono::milliseconds::zero()) = 0;
  // The error the collective ended with, or null.
  virtual std::exception_ptr exception() const = 0;

  // What this Work put on the wire, set once by the Communicator that issued it (or copied from the
  // Work it wraps): the payload bytes this rank handed over and the number of collectives (1).
  uint64_t payload_bytes() const { return payload_bytes_; }
  uint64_t collectives() const { return collectives_; }

 protected:
  void set_accounting(uint64_t bytes, uint64_t collectives) {
    payload_bytes_ = bytes;
    collectives_ = collectives;
  }

 private:
  friend class Communicator;
  uint64_t payload_bytes_ = 0;
  uint64_t collectives_ = 0;
};
using WorkPtr = std::shared_ptr<Work>;

struct CollectiveCounters {
  uint64_t calls = 0;
  uint64_t bytes = 0;  // payload bytes handed to the collective by this rank
};

// Device time on the caller's stream, for backends whose Work::wait() does not block the host.
// NCCL's wait() only makes the compute stream wait for the collective and returns at once, so the host
// wall time of waiting says nothing about the communication the computation did not hide: a timer
// records a timing event on the compute stream when made, another at stop(), and seconds() waits
// (host) until the stream reaches the second and returns the device time between them.
class StreamTimer {
 public:
  virtual ~StreamTimer() = default;
  virtual void stop() = 0;
  virtual double seconds() = 0;  // after stop()
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual int local_rank() const = 0;  // rank among the processes of this node
  virtual int local_size() const = 0;
  virtual std::string backend_name() const = 0;  // "mpi" or "nccl"

  // In place: every rank's `tensor` becomes the element-wise sum (or average) over ranks.
  virtual WorkPtr all_reduce(at::Tensor& tensor, const AllReduceOptions& options = {}) = 0;
  // In place: every rank's `tensor` becomes root's.
  virtual WorkPtr broadcast(at::Tensor& tensor, const BroadcastOptions& options = {}) = 0;
  // `output` (size() × input.numel() elements) receives every rank's `input`, in rank order.
  virtual WorkPtr all_gather(const at::Tensor& input, at::Tensor& output) = 0;
  // Variable sizes: rank r contributes counts[r] elements; `output` holds sum(counts) elements.
  // `input.numel()` must equal counts[rank()].
  virtual WorkPtr all_gather_v(const at::Tensor& input, at::Tensor& output,
                               const std::vector<int64_t>& counts) = 0;
  // `input` holds size() × output.numel() elements; rank r receives the reduction of block r.
  virtual WorkPtr reduce_scatter(const at::Tensor& input, at::Tensor& output,
                                 const ReduceScatterOptions& options = {}) = 0;
  virtual WorkPtr barrier() = 0;
  // A StreamTimer started now on the compute stream; none (nullptr) where wait() blocks the host (mpi).
  virtual std::unique_ptr<StreamTimer> start_stream_timer() { return nullptr; }

  CollectiveCounters counters(Collective c) const;
  CollectiveCounters total_counters() const;
  void reset_counters();

 protected:
  // Every backend passes each Work it issues through here: the counters and the Work's own accounting.
  WorkPtr counted(Collective c, uint64_t bytes, WorkPtr work);

 private:
  struct AtomicCounters {
    std::atomic<uint64_t> calls{0};
    std::atomic<uint64_t> bytes{0};
  };
  std::array<AtomicCounters, kNumCollectives> counters_{};
};

// Shared argument checks, so every backend refuses the same things with the same words.
void check_tensor(const at::Tensor& t, const char* backend, const char* what);
size_t element_size_bytes(const at::Tensor& t);
// Shape and dtype agreement of a collective's arguments, checked locally before anything is sent.
void check_broadcast_root(int root, int size);
void check_all_gather_args(const at::Tensor& input, const at::Tensor& output, int size);
void check_all_gather_v_args(const at::Tensor& input, const at::Tensor& output,
                             const std::vector<int64_t>& counts, int rank, int size);
void check_reduce_scatter_args(const at::Tensor& input, const at::Tensor& output, int size);

}  // namespace dt::comm
