// What the Communicator promises besides the values: asynchrony, counters, errors, the NCCL fallback.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstdlib>
#include <thread>
#include <vector>

#include "comm/mpi.h"
#include "comm/nccl.h"
#include "tests/mpi_test_util.h"
#include "util/error.h"

namespace dt::comm {
namespace {

using dt::testing::test_comm;

// EXPECT_THAT(x, HasSubstr(y)) without linking gmock.
#define EXPECT_CONTAINS(haystack, needle)                                               \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos)                      \
      << "expected to find \"" << (needle) << "\" in \"" << (haystack) << "\""

// The message of the dt::Error that `fn` throws (fails the test if it throws nothing or another type).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const dt::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a dt::Error";
  return {};
}

at::Tensor filled(int64_t len, double value, at::ScalarType dtype = at::kFloat) {
  return at::full({len}, value, dtype);
}

// ---- process and topology -----------------------------------------------------------------------

TEST(MpiCommunicator, RankSizeAndLocalRanksAgreeWithMpi) {
  auto& comm = test_comm();
  int rank = -1, size = -1;
  mpi_call([&] {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  });
  EXPECT_EQ(comm.rank(), rank);
  EXPECT_EQ(comm.size(), size);
  EXPECT_EQ(comm.backend_name(), "mpi");
  // Every test rank runs on this one machine.
  EXPECT_EQ(comm.local_size(), comm.size());
  EXPECT_EQ(comm.local_rank(), comm.rank());
}

TEST(MpiRuntime, FunnelsCallsExactlyWhenAskedOrNeeded) {
  const char* forced = std::getenv("DELTATUNE_MPI_THREAD_SINGLE");
  const bool want = forced && std::string(forced) != "0";
  int level = 0;
  mpi_call([&] { MPI_Query_thread(&level); });
  EXPECT_EQ(mpi_funneled(), want || level < MPI_THREAD_MULTIPLE);
  if (!want) {
    EXPECT_EQ(level, MPI_THREAD_MULTIPLE) << "Open MPI 4.1 grants MPI_THREAD_MULTIPLE";
  }
}

// ---- asynchrony ---------------------------------------------------------------------------------

// Five collectives in flight, waited on in reverse order: non-blocking calls must not depend on
// being completed in issue order.
TEST(MpiCommunicator, SeveralOperationsInFlightWaitedInReverse) {
  auto& comm = test_comm();
  const int n = comm.size(), r = comm.rank();
  std::vector<at::Tensor> sums;
  std::vector<WorkPtr> works;
  for (int k = 0; k < 3; ++k) {
    sums.push_back(filled(1000 + k, (r + 1) * (k + 1)));
    works.push_back(comm.all_reduce(sums.back()));
  }
  at::Tensor gathered = filled(n * 5, -1, at::kLong);
  works.push_back(comm.all_gather(filled(5, r, at::kLong), gathered));
  works.push_back(comm.barrier());
  for (auto it = works.rbegin(); it != works.rend(); ++it) EXPECT_TRUE((*it)->wait());
  for (auto& w : works) {
    EXPECT_TRUE(w->is_completed());
    EXPECT_EQ(w->exception(), nullptr);
  }
  for (int k = 0; k < 3; ++k) {
    EXPECT_TRUE(at::equal(sums[k], filled(1000 + k, (k + 1) * n * (n + 1) / 2.0))) << "tensor " << k;
  }
  EXPECT_TRUE(at::equal(gathered, at::arange(n, at::kLong).repeat_interleave(5)));
}

// Works waited on from several threads at once (MPI_THREAD_MULTIPLE, or the funnel).
TEST(MpiCommunicator, WorksWaitedFromSeveralThreads) {
  auto& comm = test_comm();
  const int n = comm.size();
  std::vector<at::Tensor> tensors;
  std::vector<WorkPtr> works;
  for (int k = 0; k < 4; ++k) {
    tensors.push_back(filled(257, comm.rank() + k, at::kDouble));
    works.push_back(comm.all_reduce(tensors.back(), {ReduceOp::Average}));
  }
  std::vector<std::thread> threads;
  for (auto& w : works) threads.emplace_back([w] { w->wait(); });
  for (auto& t : threads) t.join();
  for (int k = 0; k < 4; ++k) {
    EXPECT_TRUE(at::equal(tensors[k], filled(257, (n - 1) / 2.0 + k, at::kDouble))) << "tensor " << k;
  }
}

// Dropping a Work in flight must not leave MPI writing into freed memory: it completes first.
TEST(MpiCommunicator, DroppedWorkCompletesBeforeItGoes) {
  auto& comm = test_comm();
  const int n = comm.size();
  at::Tensor t = filled(100000, comm.rank() + 1, at::kDouble);
  comm.all_reduce(t);  // the WorkPtr is dropped at once
  EXPECT_TRUE(at::equal(t, filled(100000, n * (n + 1) / 2.0, at::kDouble)));
}

// A barrier that the other ranks have not entered yet cannot complete: wait(timeout) says so, and
// the barrier completes once they enter it. A second communicator tells them when to.
TEST(MpiCommunicator, WaitWithTimeoutReturnsFalseWhileOthersHaveNotArrived) {
  auto& comm = test_comm();
  auto signal = make_mpi_communicator();
  if (comm.rank() == 0) {
    WorkPtr barrier = comm.barrier();
    if (comm.size() > 1) {
      const auto start = std::chrono::steady_clock::now();
      EXPECT_FALSE(barrier->wait(std::chrono::milliseconds(50)));
      EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(50));
      EXPECT_FALSE(barrier->is_completed());
    }
    signal->barrier()->wait();
    EXPECT_TRUE(barrier->wait(std::chrono::seconds(60)));
  } else {
    signal->barrier()->wait();
    EXPECT_TRUE(comm.barrier()->wait(std::chrono::seconds(60)));
  }
}

// ---- counters -----------------------------------------------------------------------------------

TEST(MpiCommunicator, CountersCountCallsAndPayloadBytesExactly) {
  auto comm = make_mpi_communicator();  // its own, so the numbers are this test's alone
  const int n = comm->size(), r = comm->rank();
  at::Tensor a = filled(10, 1);                      // 40 bytes
  comm->all_reduce(a)->wait();
  comm->all_reduce(a, {ReduceOp::Average})->wait();  // 40 bytes
  at::Tensor b = filled(5, 2, at::kLong);            // 40 bytes
  comm->broadcast(b)->wait();
  at::Tensor g = filled(3 * n, 0, at::kDouble);
  comm->all_gather(filled(3, 1, at::kDouble), g)->wait();  // 24 bytes
  std::vector<int64_t> counts;
  for (int k = 0; k < n; ++k) counts.push_back(k + 1);
  at::Tensor v = filled(n * (n + 1) / 2, 0, at::kInt);
  comm->all_gather_v(filled(r + 1, 1, at::kInt), v, counts)->wait();  // 4 (r + 1) bytes
  at::Tensor rs = filled(2, 0, at::kHalf);
  comm->reduce_scatter(filled(2 * n, 1, at::kHalf), rs)->wait();  // 4 n bytes
  comm->barrier()->wait();
  // A refused call counts nothing.
  at::Tensor bytes = filled(4, 1, at::kByte);
  EXPECT_THROW(comm->all_reduce(bytes), dt::Error);

  EXPECT_EQ(comm->counters(Collective::AllReduce).calls, 2u);
  EXPECT_EQ(comm->counters(Collective::AllReduce).bytes, 80u);
  EXPECT_EQ(comm->counters(Collective::Broadcast).calls, 1u);
  EXPECT_EQ(comm->counters(Collective::Broadcast).bytes, 40u);
  EXPECT_EQ(comm->counters(Collective::AllGather).bytes, 24u);
  EXPECT_EQ(comm->counters(Collective::AllGatherV).bytes, 4u * (r + 1));
  EXPECT_EQ(comm->counters(Collective::ReduceScatter).bytes, 4u * n);
  EXPECT_EQ(comm->counters(Collective::Barrier).calls, 1u);
  EXPECT_EQ(comm->counters(Collective::Barrier).bytes, 0u);
  EXPECT_EQ(comm->total_counters().calls, 7u);
  EXPECT_EQ(comm->total_counters().bytes, 80u + 40u + 24u + 4u * (r + 1) + 4u * n);

  comm->reset_counters();
  EXPECT_EQ(comm->total_counters().calls, 0u);
  EXPECT_EQ(comm->total_counters().bytes, 0u);
  at::Tensor c = filled(3, 1);
  comm->all_reduce(c)->wait();
  EXPECT_EQ(comm->counters(Collective::AllReduce).bytes, 12u);
}

TEST(Collective, NamesAreTheMethodNames) {
  EXPECT_STREQ(collective_name(Collective::AllReduce), "all_reduce");
  EXPECT_STREQ(collective_name(Collective::AllGatherV), "all_gather_v");
  EXPECT_STREQ(collective_name(Collective::ReduceScatter), "reduce_scatter");
  EXPECT_STREQ(collective_name(Collective::Barrier), "barrier");
}

// ---- errors: detected locally, on every rank alike, before anything is sent ------------------------

TEST(MpiCommunicatorErrors, UnsupportedDtypesAreRefusedByName) {
  auto& comm = test_comm();
  at::Tensor u8 = filled(4, 1, at::kByte);
  EXPECT_CONTAINS(error_of([&] { comm.all_reduce(u8); }), "backend mpi does not support dtype Byte");
  at::Tensor flags = filled(4, 1, at::kBool);
  EXPECT_CONTAINS(error_of([&] { comm.broadcast(flags); }), "backend mpi does not support dtype Bool");
  at::Tensor c = at::zeros({4}, at::kComplexFloat);
  EXPECT_CONTAINS(error_of([&] { comm.all_reduce(c); }), "does not support dtype ComplexFloat");
}

TEST(MpiCommunicatorErrors, NonContiguousTensorsAreRefused) {
  auto& comm = test_comm();
  at::Tensor t = at::zeros({4, 6}).t();
  const std::string message = error_of([&] { comm.all_reduce(t); });
  EXPECT_CONTAINS(message, "backend mpi does not support non-contiguous tensors");
  EXPECT_CONTAINS(message, "contiguous()");  // the hint
}

TEST(MpiCommunicatorErrors, MismatchedSizesAreDetectedLocally) {
  auto& comm = test_comm();
  const int n = comm.size(), r = comm.rank();
  at::Tensor out = filled(3 * n + 1, 0);
  EXPECT_CONTAINS(error_of([&] { comm.all_gather(filled(3, 1), out); }),
              "all_gather output has " + std::to_string(3 * n + 1) + " elements");
  at::Tensor out_d = filled(3 * n, 0, at::kDouble);
  EXPECT_CONTAINS(error_of([&] { comm.all_gather(filled(3, 1), out_d); }),
              "input is Float but output is Double");

  std::vector<int64_t> counts(n, 2);
  at::Tensor v = filled(2 * n, 0);
  EXPECT_CONTAINS(error_of([&] { comm.all_gather_v(filled(3, 1), v, counts); }),
              "counts[" + std::to_string(r) + "] = 2 but this rank's input has 3 elements");
  std::vector<int64_t> too_few(n + 1, 2);
  EXPECT_CONTAINS(error_of([&] { comm.all_gather_v(filled(2, 1), v, too_few); }),
              "got " + std::to_string(n + 1) + " counts for " + std::to_string(n) + " ranks");
  at::Tensor v_short = filled(2 * n - 1, 0);
  EXPECT_CONTAINS(error_of([&] { comm.all_gather_v(filled(2, 1), v_short, counts); }),
              "counts sum to " + std::to_string(2 * n));

  at::Tensor rs = filled(4, 0);
  EXPECT_CONTAINS(error_of([&] { comm.reduce_scatter(filled(4 * n + 1, 1), rs); }),
              "reduce_scatter input has " + std::to_string(4 * n + 1) + " elements");

  at::Tensor b = filled(4, 0);
  EXPECT_CONTAINS(error_of([&] { comm.broadcast(b, {n}); }), "broadcast root " + std::to_string(n));

  // The communicator still works after refusing calls: nothing was half-sent.
  at::Tensor ok = filled(4, 1);
  comm.all_reduce(ok)->wait();
  EXPECT_TRUE(at::equal(ok, filled(4, n)));
}

TEST(MpiCommunicatorErrors, ErrorsNameRankHostAndPlace) {
  auto& comm = test_comm();
  at::Tensor u8 = filled(1, 1, at::kByte);
  const std::string message = error_of([&] { comm.all_reduce(u8); });
  EXPECT_CONTAINS(message, "[rank " + std::to_string(comm.rank()) + "/" + std::to_string(comm.size()) +
                                 " " + dt::hostname() + "]");
  EXPECT_CONTAINS(message, "communicator.cpp:");
}

TEST(CheckMpi, TurnsAnErrorCodeIntoAnErrorNamingTheCall) {
  EXPECT_NO_THROW(check_mpi(MPI_SUCCESS, "MPI_Barrier(comm)", __FILE__, __LINE__));
  const std::string message = error_of([] { CHECK_MPI(MPI_ERR_COUNT); });
  EXPECT_CONTAINS(message, "MPI_ERR_COUNT failed: ");
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(MPI_ERR_COUNT, text, &len);
  EXPECT_CONTAINS(message, std::string(text, len));
  EXPECT_CONTAINS(message, "test_comm_behaviour.cpp:");
  const std::string named = error_of([] { check_mpi(MPI_ERR_COMM, "MPI_Iallreduce(a, b)", "x/mpi.cpp", 7); });
  EXPECT_CONTAINS(named, "mpi.cpp:7: MPI_Iallreduce failed: ");
}

// ---- NCCL ---------------------------------------------------------------------------------------

// Where no GPU is visible (or NCCL is not built in), asking for NCCL fails on every rank with an
// error that says why and what to do, instead of crashing or hanging; the MPI communicator that
// bootstrapped it stays usable. Where ranks share a GPU, it says NCCL refuses that. Where every rank has a
// GPU of its own, NCCL refuses CPU tensors by name and reduces GPU tensors.
TEST(NcclCommunicator, FailsClearlyWithoutAGpuAndRefusesCpuTensors) {
  auto& comm = test_comm();
  std::unique_ptr<Communicator> nccl;
  std::string message;
  try {
    nccl = make_nccl_communicator(comm);
  } catch (const dt::Error& e) {
    message = e.what();
  }
  if (!nccl_available()) {
    EXPECT_CONTAINS(message, "deltatune was built without NCCL");
  } else if (!nccl) {
    // This rank's own reason, or (where only other ranks lack a GPU) which ranks failed.
    const bool explained = message.find("backend nccl found no usable CUDA device") != std::string::npos ||
                           message.find("could not select a GPU on rank(s)") != std::string::npos ||
                           message.find("needs a GPU of its own for every rank") != std::string::npos;
    EXPECT_TRUE(explained) << message;
    EXPECT_CONTAINS(message, "--dist.backend mpi");
    EXPECT_CONTAINS(message, "(hint: ");
  } else {
    EXPECT_EQ(nccl->backend_name(), "nccl");
    EXPECT_EQ(nccl->size(), comm.size());
    at::Tensor cpu = filled(4, 1);
    EXPECT_CONTAINS(error_of([&] { nccl->all_reduce(cpu); }),
                "backend nccl does not support CPU tensors; use --dist.backend mpi");
    EXPECT_TRUE(nccl->barrier()->wait(std::chrono::seconds(60)));
    // Real collectives: rank r contributes r + 1 on its GPU; the sum is n (n + 1) / 2 everywhere.
    const int n = comm.size();
    at::Tensor gpu = at::full({1 << 20}, static_cast<float>(comm.rank() + 1),
                              at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(
                                                                        comm.local_rank() % at::getNumGPUs())));
    nccl->all_reduce(gpu)->wait();
    EXPECT_TRUE(at::all(gpu.cpu() == static_cast<float>(n * (n + 1) / 2)).item<bool>());
    at::Tensor avg = at::full({7}, static_cast<float>(comm.rank() + 1), gpu.options());
    nccl->all_reduce(avg, {ReduceOp::Average})->wait();
    EXPECT_TRUE(at::allclose(avg.cpu(), at::full({7}, (n + 1) / 2.0f)));
    // The stream timer (what GradSync reports as exposed communication on NCCL): around a 64 MiB
    // all-reduce that the compute stream waits for, a positive device time; the host's wait() is not.
    at::Tensor big = at::ones({int64_t{1} << 24}, gpu.options());
    std::unique_ptr<StreamTimer> timer = nccl->start_stream_timer();
    ASSERT_TRUE(timer != nullptr);
    nccl->all_reduce(big)->wait();
    timer->stop();
    const double seconds = timer->seconds();
    EXPECT_GT(seconds, 0.0);
    EXPECT_LT(seconds, 60.0);
    EXPECT_TRUE(at::all(big.cpu() == static_cast<float>(n)).item<bool>());
  }
  EXPECT_EQ(comm.start_stream_timer(), nullptr);  // mpi: wait() blocks the host, its wall time counts
  at::Tensor ok = filled(2, 1);
  comm.all_reduce(ok)->wait();
  EXPECT_TRUE(at::equal(ok, filled(2, comm.size())));
}

}  // namespace
}  // namespace dt::comm
