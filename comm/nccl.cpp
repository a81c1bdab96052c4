// comm/nccl.cpp — the NCCL backend (see comm/nccl.h for the design).
//
// Streams: every collective runs on one non-blocking stream owned by the communicator. Before each
// collective an event recorded on the compute stream is waited on by that stream (so the collective
// sees the gradients the compute stream produced); after it an event is recorded, which backs the Work
// and which the watchdog polls. Work::wait() with no timeout makes the compute stream wait on that
// event instead of blocking the host, as c10d does: later kernels and host copies on the compute
// stream are ordered after the collective.
#include "comm/nccl.h"

#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <unistd.h>
#include <nccl.h>
#ifdef DELTATUNE_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <list>
#include <mutex>
#include <thread>

#include "util/error.h"
#include "util/log.h"

namespace dt::comm {
namespace {

// ---- errors -------------------------------------------------------------------------------------

std::string call_name(const char* call) {
  std::string name(call);
  return name.substr(0, name.find('('));
}

void check_cuda(cudaError_t code, const char* call, const char* file, int line) {
  if (code == cudaSuccess) return;
  throw_error(file, line, call_name(call) + " failed: " + cudaGetErrorString(code),
              "check that this rank sees a GPU (nvidia-smi, CUDA_VISIBLE_DEVICES) and that the "
              "driver matches the CUDA runtime");
}

void check_nccl(ncclResult_t code, const char* call, const char* file, int line) {
  if (code == ncclSuccess) return;
  std::string detail = ncclGetErrorString(code);
  const char* last = ncclGetLastError(nullptr);
  if (last && *last) detail += std::string(": ") + last;
  throw_error(file, line, call_name(call) + " failed: " + detail,
              "rerun with NCCL_DEBUG=INFO; a peer may have died or called collectives in another order");
}

#define CHECK_CUDA(call) check_cuda((call), #call, __FILE__, __LINE__)
#define CHECK_NCCL(call) check_nccl((call), #call, __FILE__, __LINE__)

// ---- types --------------------------------------------------------------------------------------

ncclDataType_t nccl_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kBFloat16: return ncclBfloat16;
    case at::kHalf: return ncclFloat16;
    case at::kInt: return ncclInt32;
    case at::kLong: return ncclInt64;
    default: DT_FAIL("backend nccl does not support dtype " + std::string(c10::toString(t.scalar_type())));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  if (op == ReduceOp::Sum) return ncclSum;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 10, 0)
  return ncclAvg;
#else
  DT_FAIL("backend nccl needs NCCL >= 2.10 for ReduceOp::Average", "upgrade NCCL or use Sum");
#endif
}

// The stream the caller's kernels run on.
cudaStream_t compute_stream() {
#ifdef DELTATUNE_TORCH_CUDA
  return c10::cuda::getCurrentCUDAStream().stream();
#else
  return cudaStreamLegacy;
#endif
}

// An event shared by a Work and the watchdog: either may outlive the other.
struct Event {
  cudaEvent_t event = nullptr;
  Event() { CHECK_CUDA(cudaEventCreateWithFlags(&event, cudaEventDisableTiming)); }
  ~Event() { cudaEventDestroy(event); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

// ---- watchdog -----------------------------------------------------------------------------------

// Polls the outstanding collectives; aborts the job when one exceeds the timeout or NCCL reports an
// asynchronous error, because a collective that never completes would otherwise hang every rank.
// It also holds each collective's tensors until the collective is done, so that buffers dropped by the
// caller are not reused while NCCL still writes them.
class Watchdog {
 public:
  Watchdog(ncclComm_t comm, int device, std::chrono::seconds timeout)
      : comm_(comm), device_(device), timeout_(timeout), thread_([this] { loop(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void track(std::shared_ptr<Event> done, const char* what, std::vector<at::Tensor> tensors) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back({std::move(done), what, std::chrono::steady_clock::now(), std::move(tensors)});
  }

 private:
  struct Pending {
    std::shared_ptr<Event> done;
    const char* what;
    std::chrono::steady_clock::time_point start;
    std::vector<at::Tensor> tensors;
  };

  void loop() {
    cudaSetDevice(device_);
    const auto period = std::clamp<std::chrono::milliseconds>(timeout_ / 4, std::chrono::milliseconds(10),
                                                              std::chrono::milliseconds(500));
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, period, [&] { return stop_; })) {
      for (auto it = pending_.begin(); it != pending_.end();) {
        const cudaError_t q = cudaEventQuery(it->done->event);
        if (q == cudaSuccess) {
          it = pending_.erase(it);
          continue;
        }
        // An error here is the device's (a fault in this or an earlier kernel): the collective will
        // never complete, and its peers are waiting in it. Dropping the entry would hide exactly the
        // hang the watchdog exists for.
        if (q != cudaErrorNotReady) {
          abort_job(std::string(it->what) + " failed on the device: " + cudaGetErrorString(q));
        }
        if (std::chrono::steady_clock::now() - it->start > timeout_) {
          abort_job(std::string(it->what) + " did not complete within " +
                    std::to_string(timeout_.count()) + " s");
        }
        ++it;
      }
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess &&
          async != ncclInProgress) {
        abort_job(std::string("NCCL reported an asynchronous error: ") + ncclGetErrorString(async));
      }
    }
  }

  // Not MPI_Abort: MPI is initialized FUNNELED where MULTIPLE is missing, and this thread is not the
  // one that may call MPI. Aborting the process is enough: mpirun and srun end the whole job when a
  // rank dies on a signal, and ncclCommAbort first releases the peers blocked in this communicator.
  [[noreturn]] void abort_job(const std::string& why) {
    log::error("{}nccl watchdog: {}; aborting the NCCL communicator and the job "
               "(hint: a peer likely died or diverged; rerun with NCCL_DEBUG=INFO)",
               error_prefix(), why);
    ncclCommAbort(comm_);
    std::abort();
  }

  ncclComm_t comm_;
  int device_;
  std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::list<Pending> pending_;
  std::thread thread_;  // last: starts after the members above exist
};

// ---- Work ---------------------------------------------------------------------------------------

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<Event> done, int device) : done_(std::move(done)), device_(device) {}

  bool is_completed() override {
    std::lock_guard<std::mutex> lock(mu_);
    return poll();
  }

  bool wait(std::chrono::milliseconds timeout) override {
    if (timeout.count() <= 0) {
      // Order the compute stream after the collective; the host goes on. Query the event first, so an
      // error already recorded (or one the event reports now) is thrown here, not lost.
      std::lock_guard<std::mutex> lock(mu_);
      try {
        CHECK_CUDA(cudaSetDevice(device_));
        poll();
        if (!error_) CHECK_CUDA(cudaStreamWaitEvent(compute_stream(), done_->event, 0));
      } catch (...) {
        if (!error_) error_ = std::current_exception();
      }
      if (error_) std::rethrow_exception(error_);
      return true;
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (poll()) {
          if (error_) std::rethrow_exception(error_);
          return true;
        }
      }
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  std::exception_ptr exception() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

 private:
  bool poll() {
    if (finished_) return true;
    const cudaError_t q = cudaEventQuery(done_->event);
    if (q == cudaErrorNotReady) return false;
    try {
      CHECK_CUDA(q);
    } catch (...) {
      error_ = std::current_exception();
    }
    finished_ = true;
    return true;
  }

  std::shared_ptr<Event> done_;
  int device_;
  mutable std::mutex mu_;
  bool finished_ = false;
  std::exception_ptr error_;
};

// Two timing events on the compute stream (the Work's events are created without timing: cheaper).
class NcclStreamTimer final : public StreamTimer {
 public:
  explicit NcclStreamTimer(int device) : device_(device) {
    CHECK_CUDA(cudaSetDevice(device_));
    CHECK_CUDA(cudaEventCreateWithFlags(&start_, cudaEventDefault));
    CHECK_CUDA(cudaEventCreateWithFlags(&stop_, cudaEventDefault));
    CHECK_CUDA(cudaEventRecord(start_, compute_stream()));
  }
  ~NcclStreamTimer() override {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  NcclStreamTimer(const NcclStreamTimer&) = delete;
  NcclStreamTimer& operator=(const NcclStreamTimer&) = delete;

  void stop() override {
    CHECK_CUDA(cudaSetDevice(device_));
    CHECK_CUDA(cudaEventRecord(stop_, compute_stream()));
    stopped_ = true;
  }
  double seconds() override {
    DT_CHECK(stopped_, "StreamTimer::seconds() before stop()");
    CHECK_CUDA(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start_, stop_));
    return static_cast<double>(ms) * 1e-3;
  }

 private:
  int device_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  bool stopped_ = false;
};

// ---- Communicator -------------------------------------------------------------------------------

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, const NcclOptions& options)
      : rank_(bootstrap.rank()),
        size_(bootstrap.size()),
        local_rank_(bootstrap.local_rank()),
        local_size_(bootstrap.local_size()) {
    // Pick the GPU; every rank learns whether every other rank found one, so that a rank without a
    // GPU makes all ranks fail here rather than leaving the others in ncclCommInitRank forever.
    std::string local_error;
    try {
      int devices = 0;
      const cudaError_t found = cudaGetDeviceCount(&devices);
      DT_CHECK(found == cudaSuccess && devices > 0,
               std::string("backend nccl found no usable CUDA device (cudaGetDeviceCount: ") +
                   (found == cudaSuccess ? "0 devices" : cudaGetErrorString(found)) + ")",
               "use --dist.backend mpi on machines without GPUs; otherwise check nvidia-smi, "
               "CUDA_VISIBLE_DEVICES and that the driver matches the CUDA runtime");
      device_ = options.device >= 0 ? options.device : local_rank_ % devices;
      DT_CHECK(device_ < devices, "backend nccl: device " + std::to_string(device_) + " of " +
                                      std::to_string(devices) + " visible devices does not exist");
      CHECK_CUDA(cudaSetDevice(device_));
    } catch (const std::exception& e) {
      local_error = e.what();
    }
    at::Tensor flags = at::zeros({size_}, at::kInt);
    at::Tensor mine = at::full({1}, local_error.empty() ? 0 : 1, at::kInt);
    bootstrap.all_gather(mine, flags)->wait();
    if (!local_error.empty()) throw Error(local_error);
    std::string failed;
    for (int r = 0; r < size_; ++r) {
      if (flags[r].item<int>() != 0) failed += (failed.empty() ? "" : ",") + std::to_string(r);
    }
    DT_CHECK(failed.empty(), "backend nccl could not select a GPU on rank(s) " + failed,
             "see those ranks' errors; use --dist.backend mpi on machines without GPUs");
    // NCCL refuses two ranks on one GPU ("Duplicate GPU detected", after a hang on some versions):
    // say so before ncclCommInitRank, with the way out.
    const std::string sharing = gpu_sharing_problem(bootstrap, device_);
    DT_CHECK(sharing.empty(), "backend nccl: " + sharing, "use --dist.backend mpi (or auto), or start one rank per GPU");

    // The unique id travels as int64 words, prefixed by rank 0's success flag.
    static_assert(sizeof(ncclUniqueId) % sizeof(int64_t) == 0, "ncclUniqueId is not a multiple of 8 bytes");
    constexpr int64_t kWords = sizeof(ncclUniqueId) / sizeof(int64_t);
    at::Tensor message = at::zeros({kWords + 1}, at::kLong);
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    std::string id_error;
    if (rank_ == 0) {
      try {
        CHECK_NCCL(ncclGetUniqueId(&id));
        message[0] = 1;
        std::memcpy(message.data_ptr<int64_t>() + 1, &id, sizeof(id));
      } catch (const std::exception& e) {
        id_error = e.what();
      }
    }
    bootstrap.broadcast(message, BroadcastOptions{0})->wait();
    if (!id_error.empty()) throw Error(id_error);
    DT_CHECK(message[0].item<int64_t>() == 1, "rank 0 could not create the NCCL unique id",
             "see rank 0's error");
    std::memcpy(&id, message.data_ptr<int64_t>() + 1, sizeof(id));

    CHECK_NCCL(ncclCommInitRank(&comm_, size_, id, rank_));
    CHECK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CHECK_CUDA(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    CHECK_CUDA(cudaMalloc(&barrier_buffer_, sizeof(int32_t)));
    CHECK_CUDA(cudaMemset(barrier_buffer_, 0, sizeof(int32_t)));
    watchdog_ = std::make_unique<Watchdog>(comm_, device_, options.watchdog_timeout);
  }

  ~NcclCommunicator() override {
    if (stream_) cudaStreamSynchronize(stream_);
    watchdog_.reset();
    if (comm_) ncclCommDestroy(comm_);
    if (ready_) cudaEventDestroy(ready_);
    if (stream_) cudaStreamDestroy(stream_);
    if (barrier_buffer_) cudaFree(barrier_buffer_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string backend_name() const override { return "nccl"; }

  WorkPtr all_reduce(at::Tensor& tensor, const AllReduceOptions& options) override {
    check(tensor, "all_reduce tensor");
    auto work = launch("ncclAllReduce", {tensor}, [&] {
      CHECK_NCCL(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor),
                               nccl_op(options.op), comm_, stream_));
    });
    return counted(Collective::AllReduce, payload(tensor), std::move(work));
  }

  WorkPtr broadcast(at::Tensor& tensor, const BroadcastOptions& options) override {
    check(tensor, "broadcast tensor");
    check_broadcast_root(options.root, size_);
    auto work = launch("ncclBroadcast", {tensor}, [&] {
      CHECK_NCCL(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor),
                               options.root, comm_, stream_));
    });
    return counted(Collective::Broadcast, payload(tensor), std::move(work));
  }

  WorkPtr all_gather(const at::Tensor& input, at::Tensor& output) override {
    check(input, "all_gather input");
    check(output, "all_gather output");
    check_all_gather_args(input, output, size_);
    auto work = launch("ncclAllGather", {input, output}, [&] {
      CHECK_NCCL(ncclAllGather(input.data_ptr(), output.data_ptr(), input.numel(), nccl_type(input),
                               comm_, stream_));
    });
    return counted(Collective::AllGather, payload(input), std::move(work));
  }

  // NCCL has no all-gather-v: one broadcast per rank, fused into one launch by a group.
  WorkPtr all_gather_v(const at::Tensor& input, at::Tensor& output,
                       const std::vector<int64_t>& counts) override {
    check(input, "all_gather_v input");
    check(output, "all_gather_v output");
    check_all_gather_v_args(input, output, counts, rank_, size_);
    auto work = launch("ncclBroadcast group (all_gather_v)", {input, output}, [&] {
      char* out = static_cast<char*>(output.data_ptr());
      const size_t elem = element_size_bytes(output);
      size_t offset = 0;
      CHECK_NCCL(ncclGroupStart());
      for (int r = 0; r < size_; ++r) {
        CHECK_NCCL(ncclBroadcast(input.data_ptr(), out + offset * elem, counts[r], nccl_type(input), r,
                                 comm_, stream_));
        offset += counts[r];
      }
      CHECK_NCCL(ncclGroupEnd());
    });
    return counted(Collective::AllGatherV, payload(input), std::move(work));
  }

  WorkPtr reduce_scatter(const at::Tensor& input, at::Tensor& output,
                         const ReduceScatterOptions& options) override {
    check(input, "reduce_scatter input");
    check(output, "reduce_scatter output");
    check_reduce_scatter_args(input, output, size_);
    auto work = launch("ncclReduceScatter", {input, output}, [&] {
      CHECK_NCCL(ncclReduceScatter(input.data_ptr(), output.data_ptr(), output.numel(), nccl_type(input),
                                   nccl_op(options.op), comm_, stream_));
    });
    return counted(Collective::ReduceScatter, payload(input), std::move(work));
  }

  std::unique_ptr<StreamTimer> start_stream_timer() override { return std::make_unique<NcclStreamTimer>(device_); }

  // NCCL has no barrier: an all-reduce of one integer stands in for it.
  WorkPtr barrier() override {
    auto work = launch("barrier (ncclAllReduce)", {}, [&] {
      CHECK_NCCL(ncclAllReduce(barrier_buffer_, barrier_buffer_, 1, ncclInt32, ncclSum, comm_, stream_));
    });
    return counted(Collective::Barrier, 0, std::move(work));
  }

 private:
  void check(const at::Tensor& t, const char* what) const {
    check_tensor(t, "nccl", what);
    DT_CHECK(t.is_cuda(), "backend nccl does not support CPU tensors; use --dist.backend mpi");
    DT_CHECK(t.get_device() == device_, std::string("backend nccl: ") + what + " is on cuda:" +
                                            std::to_string(t.get_device()) + ", this rank uses cuda:" +
                                            std::to_string(device_));
  }
  static uint64_t payload(const at::Tensor& t) { return t.numel() * element_size_bytes(t); }

  // Orders the collective after the compute stream's work, enqueues it, and records its done event.
  template <typename Enqueue>
  WorkPtr launch(const char* what, std::vector<at::Tensor> tensors, Enqueue&& enqueue) {
    std::lock_guard<std::mutex> lock(launch_mu_);
    CHECK_CUDA(cudaSetDevice(device_));
    CHECK_CUDA(cudaEventRecord(ready_, compute_stream()));
    CHECK_CUDA(cudaStreamWaitEvent(stream_, ready_, 0));
    enqueue();
    auto done = std::make_shared<Event>();
    CHECK_CUDA(cudaEventRecord(done->event, stream_));
    watchdog_->track(done, what, std::move(tensors));
    return std::make_shared<NcclWork>(std::move(done), device_);
  }

  int rank_, size_, local_rank_, local_size_;
  int device_ = -1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  void* barrier_buffer_ = nullptr;
  std::mutex launch_mu_;
  std::unique_ptr<Watchdog> watchdog_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, const NcclOptions& options) {
  DT_CHECK(bootstrap.backend_name() == "mpi",
           "make_nccl_communicator needs an MPI bootstrap communicator, got " + bootstrap.backend_name());
  return std::make_unique<NcclCommunicator>(bootstrap, options);
}

bool nccl_available() { return true; }

std::string gpu_sharing_problem(Communicator& bootstrap, int device) {
  // "host/PCI bus id", padded to a fixed width so that one all_gather carries every rank's.
  constexpr int64_t kWords = 16;  // 128 bytes
  std::string id;
  if (device >= 0) {
    char host[64] = {};
    gethostname(host, sizeof(host) - 1);
    char bus[32] = {};
    if (cudaDeviceGetPCIBusId(bus, sizeof(bus), device) == cudaSuccess) id = std::string(host) + "/" + bus;
  }
  at::Tensor mine = at::zeros({kWords}, at::kLong);
  std::memcpy(mine.data_ptr<int64_t>(), id.data(), std::min<size_t>(id.size(), kWords * 8 - 1));
  at::Tensor all = at::zeros({kWords * bootstrap.size()}, at::kLong);
  bootstrap.all_gather(mine, all)->wait();
  std::vector<std::string> ids;
  for (int r = 0; r < bootstrap.size(); ++r) {
    const char* p = reinterpret_cast<const char*>(all.data_ptr<int64_t>() + r * kWords);
    ids.emplace_back(p, strnlen(p, kWords * 8));
  }
  return describe_gpu_sharing(ids);
}

}  // namespace dt::comm
