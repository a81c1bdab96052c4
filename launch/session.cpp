#include "launch/session.h"

#include <ATen/Parallel.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "comm/mpi.h"
#include "comm/nccl.h"
#include "util/error.h"
#include "util/log.h"

namespace dt::launch {
namespace {

std::unique_ptr<comm::MpiRuntime>& mpi_runtime() {
  static std::unique_ptr<comm::MpiRuntime> runtime;
  return runtime;
}

std::optional<int> parse_env_int(const EnvGetter& getenv_fn, const char* name) {
  const char* v = getenv_fn(name);
  if (!v || !*v) return std::nullopt;
  char* end = nullptr;
  const long parsed = std::strtol(v, &end, 10);
  if (*end != '\0') return std::nullopt;
  return static_cast<int>(parsed);
}

}  // namespace

std::vector<LauncherEnv> read_launcher_env(const EnvGetter& getenv_fn) {
  std::vector<LauncherEnv> envs;
  LauncherEnv ompi{"Open MPI (OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK)",
                   parse_env_int(getenv_fn, "OMPI_COMM_WORLD_RANK"),
                   parse_env_int(getenv_fn, "OMPI_COMM_WORLD_SIZE"),
                   parse_env_int(getenv_fn, "OMPI_COMM_WORLD_LOCAL_RANK")};
  if (ompi.rank || ompi.size) envs.push_back(ompi);
  // mpirun inside a Slurm allocation starts its daemons with srun, so the ranks inherit the daemons'
  // SLURM_PROCID (the node index), not their rank: Slurm's variables describe us only when Slurm
  // itself launched this process (srun --mpi=pmix), i.e. when no mpirun (HNP) is above us.
  const bool under_mpirun = getenv_fn("OMPI_MCA_orte_hnp_uri") != nullptr;
  if (!under_mpirun) {
    LauncherEnv slurm{"Slurm (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID)",
                      parse_env_int(getenv_fn, "SLURM_PROCID"), parse_env_int(getenv_fn, "SLURM_NTASKS"),
                      parse_env_int(getenv_fn, "SLURM_LOCALID")};
    // SLURM_PROCID alone is set in an sbatch script's own shell too; only a job step has STEP_ID.
    if (slurm.rank && getenv_fn("SLURM_STEP_ID")) envs.push_back(slurm);
  }
  LauncherEnv torchrun{"torchrun-style (RANK/WORLD_SIZE/LOCAL_RANK)", parse_env_int(getenv_fn, "RANK"),
                       parse_env_int(getenv_fn, "WORLD_SIZE"), parse_env_int(getenv_fn, "LOCAL_RANK")};
  if (torchrun.rank || torchrun.size) envs.push_back(torchrun);
  return envs;
}

std::string check_launcher_env(const std::vector<LauncherEnv>& envs, int rank, int size, int local_rank) {
  for (const auto& env : envs) {
    auto differs = [](const std::optional<int>& v, int mpi) { return v && *v != mpi; };
    if (differs(env.rank, rank) || differs(env.size, size) || differs(env.local_rank, local_rank)) {
      auto show = [](const std::optional<int>& v) { return v ? std::to_string(*v) : std::string("unset"); };
      return "the launcher and MPI disagree: " + env.launcher + " say rank " + show(env.rank) + " of " +
             show(env.size) + " (local " + show(env.local_rank) + "), MPI says rank " + std::to_string(rank) +
             " of " + std::to_string(size) + " (local " + std::to_string(local_rank) +
             "). Was the job started by a launcher MPI cannot see (e.g. srun without --mpi=pmix), or are "
             "stale variables exported?";
    }
  }
  return {};
}

int default_threads(int cores, int local_size) { return std::max(1, cores / std::max(1, local_size)); }

Session::Session(const SessionOptions& options) {
  auto& runtime = mpi_runtime();
  if (!runtime) runtime = std::make_unique<comm::MpiRuntime>(nullptr, nullptr);
  mpi_comm_ = comm::make_mpi_communicator();
  const int rank = mpi_comm_->rank(), size = mpi_comm_->size(), local = mpi_comm_->local_rank();
  set_error_context(rank, size);
  log::configure(rank, size, options.log_all_ranks);

  const std::string mismatch =
      check_launcher_env(read_launcher_env([](const char* n) { return std::getenv(n); }), rank, size, local);
  if (!mismatch.empty()) throw_usage_error(error_prefix() + mismatch);

  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  threads_ = options.threads > 0 ? options.threads : default_threads(cores, mpi_comm_->local_size());
  at::set_num_threads(threads_);

  comm_ = mpi_comm_.get();
  const bool want_nccl = options.backend == "nccl" || (options.backend == "auto" && options.want_cuda);
  if (options.backend != "auto" && options.backend != "mpi" && options.backend != "nccl") {
    throw_usage_error("--dist.backend must be auto, mpi or nccl, not '" + options.backend + "'");
  }
  if (want_nccl) {
    if (!comm::nccl_available()) {
      if (options.backend == "nccl") {
        throw_usage_error("--dist.backend nccl: this deltatune was built without NCCL "
                          "(configure with -DDELTATUNE_NCCL=ON and a CUDA toolkit with NCCL)");
      }
    } else {
      nccl_comm_ = comm::make_nccl_communicator(*mpi_comm_);
      comm_ = nccl_comm_.get();
    }
  }
}

Session::~Session() = default;

void shutdown_mpi(int exit_code, bool error) {
  auto& runtime = mpi_runtime();
  if (!runtime) return;
  // Through mpi_call: where MPI is funneled, only the communication thread may call it.
  int size = 1;
  comm::mpi_call([&] { MPI_Comm_size(MPI_COMM_WORLD, &size); });
  if (error && size > 1) {
    std::fflush(stdout);
    std::fflush(stderr);
    comm::mpi_call([exit_code] { MPI_Abort(MPI_COMM_WORLD, exit_code); });
  }
  runtime.reset();
}

}  // namespace dt::launch
