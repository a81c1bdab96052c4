// launch/session.h — what every distributed subcommand does before its first collective.
//
// Design note: MPI is the source of truth for rank and size. The launcher's own variables
// (Open MPI's OMPI_COMM_WORLD_*, Slurm's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, torchrun-style
// RANK/WORLD_SIZE/LOCAL_RANK) are cross-checked against it: a disagreement means two jobs were mixed
// up (e.g. `srun` without `--mpi=pmix` starts N singletons, each thinking it is rank 0 of 1), and
// training on would silently be wrong. Torch threads are split among the ranks of a node so that ranks
// do not oversubscribe the cores.
#pragma once

#include <c10/core/Device.h>

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
  int threads = 0;  // torch intra-op threads per rank; 0: the node's cores / local ranks, at most the
                    // cores the rank is bound to (and kMaxThreadsOnGpu on a GPU)
  // Where the subcommand's tensors live: cpu | cuda | auto (cuda when torch sees a GPU). On cuda each
  // local rank takes GPU local_rank % device_count (CUDA_VISIBLE_DEVICES honoured).
  std::string device = "cpu";
};

// The device `spec` (cpu|cuda|auto) names for a rank with `local_rank`, given `gpus` visible GPUs.
// --device cuda with no GPU is a UsageError (one line, exit 2).
c10::Device resolve_device(const std::string& spec, int local_rank, int gpus);
// --dist.backend auto picks NCCL when this binary has it and every rank has a GPU of its own
// (comm::gpu_sharing_problem), MPI otherwise: ranks sharing a GPU all-reduce through host memory.

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
  c10::Device device() const { return device_; }

 private:
  std::unique_ptr<comm::Communicator> mpi_comm_;
  std::unique_ptr<comm::Communicator> nccl_comm_;
  comm::Communicator* comm_ = nullptr;
  int threads_ = 1;
  c10::Device device_ = c10::Device(c10::kCPU);
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
// Threads per rank so that local ranks share the node's cores: max(1, cores / local_size), and on a
// GPU at most kMaxThreadsOnGpu: the host only launches kernels and collates batches there.
constexpr int kMaxThreadsOnGpu = 4;
int default_threads(int cores, int local_size, bool on_gpu = false);
// The cores this process may run on (its CPU affinity: one when mpirun bound it to a core).
int usable_cores();

// Where a rank runs: its pid, its host's name and the host's IPv4 addresses (loopback left out), so a
// start-up line shows which machines, and which of their networks, a job spans.
struct RankPlace {
  int pid = 0;
  std::string host;
  std::string addresses;  // "10.213.0.1" or "10.0.0.5,192.168.1.5"; "-" when the host has none
};
// Collective over `comm`: every rank gets every rank's place, in rank order.
std::vector<RankPlace> gather_placement(comm::Communicator& comm);
int count_hosts(const std::vector<RankPlace>& places);
// "2 hosts: dt-h0 (10.213.0.1) ranks 0; dt-h1 (10.213.0.2) ranks 1"
std::string describe_hosts(const std::vector<RankPlace>& places);

}  // namespace dt::launch
