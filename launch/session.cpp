#include "launch/session.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <arpa/inet.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
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

int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return static_cast<int>(std::thread::hardware_concurrency());
  return CPU_COUNT(&set);
}

int default_threads(int cores, int local_size, bool on_gpu) {
  const int share = std::max(1, cores / std::max(1, local_size));
  return on_gpu ? std::min(share, kMaxThreadsOnGpu) : share;
}

c10::Device resolve_device(const std::string& spec, int local_rank, int gpus) {
  if (spec != "cpu" && spec != "cuda" && spec != "auto") {
    throw_usage_error("--device must be cpu, cuda or auto, not '" + spec + "'");
  }
  if (spec == "cpu" || (spec == "auto" && gpus == 0)) return c10::Device(c10::kCPU);
  if (gpus == 0) {
    throw_usage_error("--device cuda: no GPU is visible to this process (torch sees 0 CUDA devices; check "
                      "nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu)");
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank % gpus));
}

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

  const int gpus = at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0;
  device_ = resolve_device(options.device, local, gpus);
  if (device_.is_cuda()) {
    // This rank's GPU becomes the current device: torch's current stream, NCCL and cudaMalloc follow it.
    at::globalContext().lazyInitDevice(c10::kCUDA);
    c10::impl::VirtualGuardImpl(c10::kCUDA).setDevice(device_);
  }
  // At most the cores this rank may run on: mpirun binds each rank to a core by default, and 8 threads
  // on one bound core ran the CPU main job at 330 ms a step on a 16-core GPU machine, against 96 ms
  // with one; unbound ranks split the node's cores.
  const int node_cores = static_cast<int>(std::thread::hardware_concurrency());
  const int share = default_threads(node_cores, mpi_comm_->local_size(), device_.is_cuda());
  threads_ = options.threads > 0 ? options.threads : std::min(share, std::max(1, usable_cores()));
  at::set_num_threads(threads_);
  comm_ = mpi_comm_.get();
  if (options.backend != "auto" && options.backend != "mpi" && options.backend != "nccl") {
    throw_usage_error("--dist.backend must be auto, mpi or nccl, not '" + options.backend + "'");
  }
  if (options.backend == "nccl") {
    if (!comm::nccl_available()) {
      throw_usage_error("--dist.backend nccl: this deltatune was built without NCCL "
                        "(configure with -DDELTATUNE_NCCL=ON and a CUDA toolkit with NCCL)");
    }
    if (!device_.is_cuda()) {
      throw_usage_error("--dist.backend nccl all-reduces GPU tensors: it needs --device cuda (or auto on a "
                        "machine with a GPU); use --dist.backend mpi for --device cpu");
    }
  }
  bool use_nccl = false;
  // (--device cpu is the same on every rank: then auto means MPI without asking.)
  if (options.backend == "nccl" || (options.backend == "auto" && comm::nccl_available() && options.device != "cpu")) {
    // Collective: every rank learns whether every rank has a GPU of its own, so all pick alike.
    const std::string sharing = comm::gpu_sharing_problem(*mpi_comm_, device_.is_cuda() ? device_.index() : -1);
    if (options.backend == "nccl" && !sharing.empty()) {
      throw_usage_error("--dist.backend nccl: " + sharing + "; use --dist.backend mpi or auto, or start one rank "
                        "per GPU");
    }
    use_nccl = sharing.empty();
  }
  if (use_nccl) {
    nccl_comm_ = comm::make_nccl_communicator(*mpi_comm_);
    comm_ = nccl_comm_.get();
  }
}

Session::~Session() = default;

namespace {
std::string ipv4_addresses() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "-";
  std::vector<std::string> out;
  for (const ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN] = {};
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    if (inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)) == nullptr) continue;
    if (std::string(text).rfind("127.", 0) == 0) continue;
    if (std::find(out.begin(), out.end(), text) == out.end()) out.emplace_back(text);
  }
  freeifaddrs(list);
  return out.empty() ? "-" : fmt::format("{}", fmt::join(out, ","));
}
}  // namespace

std::vector<RankPlace> gather_placement(comm::Communicator& comm) {
  // Fixed-width records of chars as int32 (the communicator's dtypes), one per rank: pid, then
  // "host\taddresses", cut at kChars (a name that long is only shown cut).
  constexpr int kChars = 192;
  const std::string text = (hostname() + "\t" + ipv4_addresses()).substr(0, kChars);
  at::Tensor mine = at::zeros({kChars + 1}, at::kInt);
  mine[0] = static_cast<int>(getpid());
  for (size_t i = 0; i < text.size(); ++i) mine[i + 1] = static_cast<int>(static_cast<unsigned char>(text[i]));
  at::Tensor all = at::zeros({comm.size() * (kChars + 1)}, at::kInt);
  comm.all_gather(mine, all)->wait();
  std::vector<RankPlace> places;
  for (int r = 0; r < comm.size(); ++r) {
    const int* p = all.data_ptr<int>() + r * (kChars + 1);
    std::string record;
    for (int i = 1; i <= kChars && p[i] != 0; ++i) record += static_cast<char>(p[i]);
    const size_t tab = record.find('\t');
    places.push_back({p[0], record.substr(0, tab), tab == std::string::npos ? "-" : record.substr(tab + 1)});
  }
  return places;
}

// The hosts in order of their first rank.
static std::vector<std::string> distinct_hosts(const std::vector<RankPlace>& places) {
  std::vector<std::string> hosts;
  for (const auto& p : places) {
    if (std::find(hosts.begin(), hosts.end(), p.host) == hosts.end()) hosts.push_back(p.host);
  }
  return hosts;
}

int count_hosts(const std::vector<RankPlace>& places) { return static_cast<int>(distinct_hosts(places).size()); }

std::string describe_hosts(const std::vector<RankPlace>& places) {
  const std::vector<std::string> hosts = distinct_hosts(places);
  std::vector<std::string> parts;
  for (const auto& host : hosts) {
    std::vector<int> ranks;
    std::string addresses;
    for (size_t r = 0; r < places.size(); ++r) {
      if (places[r].host != host) continue;
      ranks.push_back(static_cast<int>(r));
      addresses = places[r].addresses;
    }
    parts.push_back(
        fmt::format("{} ({}) rank{} {}", host, addresses, ranks.size() > 1 ? "s" : "", fmt::join(ranks, ",")));
  }
  return fmt::format("{} host{}: {}", hosts.size(), hosts.size() > 1 ? "s" : "", fmt::join(parts, "; "));
}

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
