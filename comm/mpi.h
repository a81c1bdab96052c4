// comm/mpi.h — the MPI backend (CPU tensors) and the MPI process lifetime.
//
// Design note: MPI is initialized with MPI_THREAD_MULTIPLE where the library offers it, so Work
// handles may be waited on from any thread; where it is not offered, all MPI calls of the backend go
// through one dedicated communication thread. Collectives are non-blocking (MPI_Iallreduce, ...), so
// several can be in flight at once, which is what lets GradSync overlap buckets with backward.
// MPI failures become dt::Error carrying rank, host and the MPI call (MPI_ERRORS_RETURN + CHECK_MPI).
#pragma once

#include <mpi.h>

#include <functional>
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace dt::comm {

// Initializes MPI on construction (unless already initialized) and finalizes on destruction.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
  int thread_level() const { return thread_level_; }

 private:
  int thread_level_ = MPI_THREAD_SINGLE;
  bool owns_ = false;
};

// A communicator over `comm` (duplicated, so our traffic never matches a user's messages).
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm = MPI_COMM_WORLD);

// Runs `fn`, which calls MPI, where that is allowed: on the MPI thread when the library lacks
// MPI_THREAD_MULTIPLE (or DELTATUNE_MPI_THREAD_SINGLE=1 forces that path), inline otherwise.
// Code outside comm/ that calls MPI directly (test mains, session set-up) goes through it.
void mpi_call(const std::function<void()>& fn);
// Whether MPI calls are being funneled through the MPI thread.
bool mpi_funneled();

// Throws dt::Error "[rank r host] file:line: MPI_Xxx failed: <MPI error string>".
void check_mpi(int code, const char* call, const char* file, int line);
#define CHECK_MPI(call) ::dt::comm::check_mpi((call), #call, __FILE__, __LINE__)

}  // namespace dt::comm
