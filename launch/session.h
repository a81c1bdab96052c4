// launch/session.h — what every distributed subcommand does before its first collective.
//
// Design note: MPI is the source of truth for rank and size. The launcher's own variables
// (Open MPI's OMPI_COMM_WORLD_*, Slurm's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, torchrun-style
// RANK/WORLD_SIZE/LOCAL_RANK) are cross-checked against it: a disagreement means two jobs were mixed
// up (e.g. `srun` without `--mpi=pmix` starts N singletons, each thinking it is rank 0 of 1), and
// training on would silently be wrong. Torch threads are split among the ranks of a node so that ranks
// do not oversubscribe the cores.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "comm/communicator.h"

namespace dt::comm {
class MpiRuntime;
}

namespace dt::launch {

struct SessionOptions {
  std::string backend = "auto";  // auto|mpi|nccl
  bool log_all_ranks = false;
  int threads = 0;  // torch intra-op threads per rank; 0: cores of the node / local ranks
  bool want_cuda = false;  // whether the subcommand's tensors will live on a GPU
};

// MPI stays initialized until shutdown_mpi(), which main() calls after the subcommand returned or
// its error was printed: after an error (exit_code 1 or 2) in a multi-rank job it calls MPI_Abort
// with that code, so the other ranks, possibly blocked in a collective, exit too instead of hanging.
void shutdown_mpi(int exit_code, bool error);

class Session {
 public:
  explicit Session(const SessionOptions& options);
  ~Session();
  comm::Communicator& comm() { return *comm_; }
  // The MPI communicator (for CPU-side agreement, hashes, ...), also when comm() is NCCL.
  comm::Communicator& cpu_comm() { return *mpi_comm_; }
  int rank() const { return mpi_comm_->rank(); }
  int size() const { return mpi_comm_->size(); }
  int threads() const { return threads_; }

 private:
  std::unique_ptr<comm::Communicator> mpi_comm_;
  std::unique_ptr<comm::Communicator> nccl_comm_;
  comm::Communicator* comm_ = nullptr;
  int threads_ = 1;
};

// The launcher's view of this process, from the environment (absent variables stay empty).
struct LauncherEnv {
  std::string launcher;  // "Open MPI", "Slurm", "torchrun-style"
  std::optional<int> rank, size, local_rank;
};
using EnvGetter = std::function<const char*(const char*)>;
std::vector<LauncherEnv> read_launcher_env(const EnvGetter& getenv_fn);
// Empty when consistent; otherwise one line naming the variable, its value and MPI's.
std::string check_launcher_env(const std::vector<LauncherEnv>& envs, int rank, int size,
                               int local_rank);
// Threads per rank so that local ranks share the node's cores: max(1, cores / local_size).
int default_threads(int cores, int local_size);

}  // namespace dt::launch
