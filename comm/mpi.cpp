// comm/mpi.cpp — the MPI backend: process lifetime, the comm thread, user types, collectives.
//
// Threading: MPI is initialized on a dedicated "MPI thread" that this file owns. If the library grants
// MPI_THREAD_MULTIPLE, every other thread calls MPI directly and the MPI thread only idles until it
// finalizes. Otherwise (or with DELTATUNE_MPI_THREAD_SINGLE=1, which requests MPI_THREAD_FUNNELED to
// exercise this path) every MPI call of the backend is handed to the MPI thread and run there, which
// is legal at any thread level because that thread is MPI's main thread.
#include "comm/mpi.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include "util/error.h"
#include "util/log.h"

namespace dt::comm {
namespace {

// ---- the MPI thread -----------------------------------------------------------------------------

// Runs tasks one at a time, in submission order; exceptions travel back to the submitter.
class MpiThread {
 public:
  MpiThread() : thread_([this] { loop(); }) {}
  ~MpiThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void run(const std::function<void()>& fn) {
    if (std::this_thread::get_id() == thread_.get_id()) return fn();
    std::packaged_task<void()> task(fn);
    auto done = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    done.get();
  }

 private:
  void loop() {
    for (;;) {
      std::packaged_task<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;  // last: the members above exist before it starts
};

// Process-wide MPI state: there is one MPI library per process, so this is inherently global.
struct MpiState {
  std::unique_ptr<MpiThread> thread;  // set while an MpiRuntime that initialized MPI lives
  bool funnel = false;                // hand every call to `thread`
  std::once_flag types_once;
  MPI_Datatype bf16 = MPI_DATATYPE_NULL;
  MPI_Datatype f16 = MPI_DATATYPE_NULL;
  MPI_Op bf16_sum = MPI_OP_NULL;
  MPI_Op f16_sum = MPI_OP_NULL;
};
// Never destroyed: an MpiRuntime held in a static may be destroyed after any function-local static.
MpiState& state() {
  static MpiState* s = new MpiState;
  return *s;
}

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);  // callable from any thread, before and after MPI_Finalize
  return finalized != 0;
}

// ---- bfloat16 / float16: MPI has no such types ----------------------------------------------------

// Sums in float and rounds once back to the 16-bit type (c10's conversions round to nearest even),
// so the result is what a float sum rounded to the type gives, pair by pair.
template <typename T>
void sum_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = T(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

void create_user_types() {
  auto& s = state();
  CHECK_MPI(MPI_Type_contiguous(2, MPI_BYTE, &s.bf16));
  CHECK_MPI(MPI_Type_commit(&s.bf16));
  CHECK_MPI(MPI_Type_contiguous(2, MPI_BYTE, &s.f16));
  CHECK_MPI(MPI_Type_commit(&s.f16));
  CHECK_MPI(MPI_Op_create(&sum_16bit<c10::BFloat16>, /*commute=*/1, &s.bf16_sum));
  CHECK_MPI(MPI_Op_create(&sum_16bit<c10::Half>, /*commute=*/1, &s.f16_sum));
}

void free_user_types() {
  auto& s = state();
  if (s.bf16 != MPI_DATATYPE_NULL) MPI_Type_free(&s.bf16);
  if (s.f16 != MPI_DATATYPE_NULL) MPI_Type_free(&s.f16);
  if (s.bf16_sum != MPI_OP_NULL) MPI_Op_free(&s.bf16_sum);
  if (s.f16_sum != MPI_OP_NULL) MPI_Op_free(&s.f16_sum);
}

MPI_Datatype mpi_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kInt: return MPI_INT32_T;
    case at::kLong: return MPI_INT64_T;
    case at::kBFloat16: return state().bf16;
    case at::kHalf: return state().f16;
    default: DT_FAIL("backend mpi has no MPI type for " + std::string(c10::toString(t.scalar_type())));
  }
}

MPI_Op mpi_sum(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return state().bf16_sum;
    case at::kHalf: return state().f16_sum;
    default: return MPI_SUM;
  }
}

// Average = sum, then divide on completion. Integers divide with truncation, as NCCL's ncclAvg does.
void divide_by(at::Tensor& t, int n) {
  if (at::isIntegralType(t.scalar_type(), /*includeBool=*/false)) {
    t.div_(n, "trunc");
  } else {
    t.div_(n);
  }
}

int checked_count(int64_t numel, const char* what) {
  DT_CHECK(numel <= INT_MAX,
           std::string("backend mpi: ") + what + " has " + std::to_string(numel) +
               " elements, more than MPI's int count allows",
           "split it into buckets of fewer than 2^31 elements");
  return static_cast<int>(numel);
}

// ---- Work -------------------------------------------------------------------------------------

class MpiWork final : public Work {
 public:
  MpiWork(const char* call, std::vector<at::Tensor> tensors)
      : call_(call), tensors_(std::move(tensors)) {}

  // A Work dropped in flight still has MPI writing into its tensors: finish it first.
  ~MpiWork() override {
    if (done_ || mpi_finalized()) return;
    try {
      wait(std::chrono::milliseconds::zero());
    } catch (const std::exception& e) {
      log::error("{}: dropped in flight and failed: {}", call_, e.what());
    }
  }

  MPI_Request request = MPI_REQUEST_NULL;
  std::vector<int> counts, displs;  // all_gather_v's arrays: MPI reads them until completion
  std::function<void()> finish;     // post-processing, run once on completion

  bool is_completed() override { return poll(); }

  bool wait(std::chrono::milliseconds timeout) override {
    // Never MPI_Wait: Open MPI's MPI_Wait spins on the core without yielding unless mpirun sees the
    // node oversubscribed, so a rank waiting for a slower peer starves whatever shares its core (the
    // peer itself, on a loaded node: measured 104-108 ms per LoRA step vs 81-89 ms with polling,
    // bench/results/step_time_investigation.md). Poll with MPI_Test (which also progresses the
    // non-blocking collective), yielding; back off to short sleeps once the wait is clearly long.
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::microseconds(10);
    for (int spins = 0; !poll(); ++spins) {
      if (timeout.count() > 0 && std::chrono::steady_clock::now() >= deadline) return false;
      if (spins < 2000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::microseconds(200));
      }
    }
    if (auto e = exception()) std::rethrow_exception(e);
    return true;
  }

  std::exception_ptr exception() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

 private:
  bool poll() {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return true;
    try {
      int flag = 0;
      auto step = [&] {
        MPI_Status status;
        const int rc = MPI_Test(&request, &flag, &status);
        if (rc != MPI_SUCCESS) {
          const std::string call = std::string("MPI_Test of ") + call_;
          check_mpi(rc, call.c_str(), __FILE__, __LINE__);
        }
      };
      if (state().funnel) {
        state().thread->run(step);
      } else {
        step();
      }
      if (!flag) return false;
      if (finish) finish();
    } catch (...) {
      error_ = std::current_exception();
    }
    done_ = true;
    finish = nullptr;
    tensors_.clear();
    return true;
  }

  const char* call_;
  std::vector<at::Tensor> tensors_;  // alive until the collective completes
  mutable std::mutex mu_;
  bool done_ = false;
  std::exception_ptr error_;
};

// ---- Communicator -------------------------------------------------------------------------------

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm parent) {
    mpi_call([&] {
      std::call_once(state().types_once, create_user_types);
      CHECK_MPI(MPI_Comm_dup(parent, &comm_));
      CHECK_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
      CHECK_MPI(MPI_Comm_rank(comm_, &rank_));
      CHECK_MPI(MPI_Comm_size(comm_, &size_));
      MPI_Comm node;
      CHECK_MPI(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
      CHECK_MPI(MPI_Comm_rank(node, &local_rank_));
      CHECK_MPI(MPI_Comm_size(node, &local_size_));
      CHECK_MPI(MPI_Comm_free(&node));
    });
  }
  ~MpiCommunicator() override {
    if (comm_ == MPI_COMM_NULL || mpi_finalized()) return;
    mpi_call([&] { MPI_Comm_free(&comm_); });
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string backend_name() const override { return "mpi"; }

  // all_reduce and broadcast also take GPU tensors (--device cuda with --dist.backend mpi, e.g. two
  // ranks sharing one GPU, where NCCL refuses): Open MPI as packaged is not CUDA-aware, so the tensor
  // is staged through host memory — copied out when the call is made (that waits for the GPU) and
  // copied back when the work completes. Bytes and counters are those of the tensor itself.
  WorkPtr all_reduce(at::Tensor& tensor, const AllReduceOptions& options) override {
    check(tensor, "all_reduce tensor", /*staged=*/true);
    const int n = checked_count(tensor.numel(), "the all_reduce tensor");
    at::Tensor host = tensor.is_cpu() ? tensor : tensor.to(at::kCPU);
    auto work = std::make_shared<MpiWork>("MPI_Iallreduce", std::vector<at::Tensor>{tensor, host});
    mpi_call([&] {
      CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, host.data_ptr(), n, mpi_type(host), mpi_sum(host),
                               comm_, &work->request));
    });
    const bool average = options.op == ReduceOp::Average;
    if (average || !tensor.is_cpu()) {
      work->finish = [t = tensor, host, s = size_, average]() mutable {
        if (average) divide_by(host, s);
        if (!t.is_cpu()) t.copy_(host);
      };
    }
    return counted(Collective::AllReduce, payload(tensor), std::move(work));
  }

  WorkPtr broadcast(at::Tensor& tensor, const BroadcastOptions& options) override {
    check(tensor, "broadcast tensor", /*staged=*/true);
    check_broadcast_root(options.root, size_);
    const int n = checked_count(tensor.numel(), "the broadcast tensor");
    at::Tensor host = tensor.is_cpu() ? tensor : tensor.to(at::kCPU);
    auto work = std::make_shared<MpiWork>("MPI_Ibcast", std::vector<at::Tensor>{tensor, host});
    mpi_call([&] {
      CHECK_MPI(MPI_Ibcast(host.data_ptr(), n, mpi_type(host), options.root, comm_, &work->request));
    });
    if (!tensor.is_cpu()) work->finish = [t = tensor, host]() mutable { t.copy_(host); };
    return counted(Collective::Broadcast, payload(tensor), std::move(work));
  }

  WorkPtr all_gather(const at::Tensor& input, at::Tensor& output) override {
    check(input, "all_gather input");
    check(output, "all_gather output");
    check_all_gather_args(input, output, size_);
    checked_count(output.numel(), "the all_gather output");
    const int n = static_cast<int>(input.numel());
    auto work = std::make_shared<MpiWork>("MPI_Iallgather", std::vector<at::Tensor>{input, output});
    mpi_call([&] {
      CHECK_MPI(MPI_Iallgather(input.data_ptr(), n, mpi_type(input), output.data_ptr(), n,
                               mpi_type(output), comm_, &work->request));
    });
    return counted(Collective::AllGather, payload(input), std::move(work));
  }

  WorkPtr all_gather_v(const at::Tensor& input, at::Tensor& output,
                       const std::vector<int64_t>& counts) override {
    check(input, "all_gather_v input");
    check(output, "all_gather_v output");
    check_all_gather_v_args(input, output, counts, rank_, size_);
    auto work = std::make_shared<MpiWork>("MPI_Iallgatherv", std::vector<at::Tensor>{input, output});
    int64_t offset = 0;
    for (int64_t c : counts) {
      work->counts.push_back(checked_count(c, "an all_gather_v block"));
      work->displs.push_back(checked_count(offset, "the all_gather_v output"));
      offset += c;
    }
    mpi_call([&] {
      CHECK_MPI(MPI_Iallgatherv(input.data_ptr(), work->counts[rank_], mpi_type(input),
                                output.data_ptr(), work->counts.data(), work->displs.data(),
                                mpi_type(output), comm_, &work->request));
    });
    return counted(Collective::AllGatherV, payload(input), std::move(work));
  }

  WorkPtr reduce_scatter(const at::Tensor& input, at::Tensor& output,
                         const ReduceScatterOptions& options) override {
    check(input, "reduce_scatter input");
    check(output, "reduce_scatter output");
    check_reduce_scatter_args(input, output, size_);
    checked_count(input.numel(), "the reduce_scatter input");
    const int n = static_cast<int>(output.numel());
    auto work =
        std::make_shared<MpiWork>("MPI_Ireduce_scatter_block", std::vector<at::Tensor>{input, output});
    mpi_call([&] {
      CHECK_MPI(MPI_Ireduce_scatter_block(input.data_ptr(), output.data_ptr(), n, mpi_type(input),
                                          mpi_sum(input), comm_, &work->request));
    });
    if (options.op == ReduceOp::Average) {
      work->finish = [t = output, s = size_]() mutable { divide_by(t, s); };
    }
    return counted(Collective::ReduceScatter, payload(input), std::move(work));
  }

  WorkPtr barrier() override {
    auto work = std::make_shared<MpiWork>("MPI_Ibarrier", std::vector<at::Tensor>{});
    mpi_call([&] { CHECK_MPI(MPI_Ibarrier(comm_, &work->request)); });
    return counted(Collective::Barrier, 0, std::move(work));
  }

 private:
  static void check(const at::Tensor& t, const char* what, bool staged = false) {
    check_tensor(t, "mpi", what);
    DT_CHECK(t.is_cpu() || (staged && t.is_cuda()),
             std::string("backend mpi does not support ") + t.device().str() + " tensors (" + what + ")",
             "use --dist.backend nccl for GPU tensors");
  }
  static uint64_t payload(const at::Tensor& t) { return t.numel() * element_size_bytes(t); }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace

// ---- public functions ---------------------------------------------------------------------------

void mpi_call(const std::function<void()>& fn) {
  if (state().funnel) {
    state().thread->run(fn);
  } else {
    fn();
  }
}

bool mpi_funneled() { return state().funnel; }

void check_mpi(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(code, text, &len);
  std::string name(call);
  name = name.substr(0, name.find('('));
  throw_error(file, line, name + " failed: " + std::string(text, len),
              "a peer may have died or called collectives in another order; check every rank's log");
}

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  auto& s = state();
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    // Someone else owns MPI; use it at whatever level they chose, from the threads they call us on.
    MPI_Query_thread(&thread_level_);
    return;
  }
  const char* force = std::getenv("DELTATUNE_MPI_THREAD_SINGLE");
  const bool funnel_forced = force && *force && std::strcmp(force, "0") != 0;
  const int requested = funnel_forced ? MPI_THREAD_FUNNELED : MPI_THREAD_MULTIPLE;
  s.thread = std::make_unique<MpiThread>();
  int rc = MPI_SUCCESS;
  s.thread->run([&] { rc = MPI_Init_thread(argc, argv, requested, &thread_level_); });
  DT_CHECK(rc == MPI_SUCCESS, "MPI_Init_thread failed (code " + std::to_string(rc) + ")",
           "run under mpirun/srun, or check the MPI installation with `mpirun -np 1 hostname`");
  owns_ = true;
  s.funnel = funnel_forced || thread_level_ < MPI_THREAD_MULTIPLE;
}

MpiRuntime::~MpiRuntime() {
  if (!owns_) return;
  auto& s = state();
  s.thread->run([] {
    if (mpi_finalized()) return;
    free_user_types();
    MPI_Finalize();
  });
  s.funnel = false;
  s.thread.reset();
}

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  DT_CHECK(initialized && !mpi_finalized(), "MPI is not initialized",
           "construct a dt::comm::MpiRuntime (launch::Session does) before making a communicator");
  return std::make_unique<MpiCommunicator>(comm);
}

}  // namespace dt::comm
