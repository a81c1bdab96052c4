// launch/commbench.cpp — `deltatune commbench`: collective bandwidth in the manner of nccl-tests.
//
// One table for every collective (`size count type redop | time algbw busbw #wrong`), `#` comment
// lines around it, results verified during the timed run. Every iteration gets fresh inputs that
// depend on the rank and the iteration, chosen so that the exact result is known in closed form and
// exactly representable in the datatype; the fill and the check are outside the timed interval.
// time = mean over iterations of one collective (issue to completion, the ranks lined up by a barrier
// before each), the maximum over ranks;
// #wrong = wrong elements summed over ranks and iterations.
#include "launch/commbench.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <climits>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "comm/mpi.h"
#include "launch/cli.h"
#include "launch/session.h"
#include "util/error.h"

namespace dt::launch {

// ---- the arithmetic (launch/commbench.h) --------------------------------------------------------

namespace commbench {

Op parse_op(const std::string& name) {
  if (name == "allreduce") return Op::AllReduce;
  if (name == "allgather") return Op::AllGather;
  if (name == "broadcast") return Op::Broadcast;
  if (name == "reducescatter") return Op::ReduceScatter;
  throw_usage_error("deltatune commbench: --op must be allreduce, allgather, broadcast or reducescatter, not '" +
                    name + "'");
}

const char* op_name(Op op) {
  switch (op) {
    case Op::AllReduce: return "allreduce";
    case Op::AllGather: return "allgather";
    case Op::Broadcast: return "broadcast";
    case Op::ReduceScatter: return "reducescatter";
  }
  return "?";
}

const char* redop_name(Op op) { return op == Op::AllReduce || op == Op::ReduceScatter ? "sum" : "none"; }

int64_t parse_bytes(const std::string& text, const std::string& flag) {
  auto bad = [&] {
    throw_usage_error("deltatune commbench: " + flag + " '" + text +
                      "' is not a byte count (e.g. 8, 64K, 64M, 1G)");
  };
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) bad();
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    bad();
  }
  int64_t scale = 1;
  const std::string suffix = text.substr(used);
  if (suffix.size() > 1) bad();
  if (suffix.size() == 1) {
    switch (std::toupper(static_cast<unsigned char>(suffix[0]))) {
      case 'K': scale = int64_t{1} << 10; break;
      case 'M': scale = int64_t{1} << 20; break;
      case 'G': scale = int64_t{1} << 30; break;
      default: bad();
    }
  }
  if (value > LLONG_MAX / scale) bad();
  return value * scale;
}

double bus_factor(Op op, int ranks) {
  const double n = ranks;
  switch (op) {
    case Op::AllReduce: return 2.0 * (n - 1) / n;
    case Op::AllGather:
    case Op::ReduceScatter: return (n - 1) / n;
    case Op::Broadcast: return 1.0;
  }
  return 1.0;
}

std::vector<int64_t> benchmark_sizes(int64_t min_bytes, int64_t max_bytes, double factor, Op op,
                                     int element_size, int ranks) {
  const bool per_rank_blocks = op == Op::AllGather || op == Op::ReduceScatter;
  const int64_t unit = static_cast<int64_t>(element_size) * (per_rank_blocks ? ranks : 1);
  std::vector<int64_t> sizes;
  for (int64_t s = min_bytes; s <= max_bytes;) {
    sizes.push_back(s / unit * unit);
    const double next = std::floor(static_cast<double>(s) * factor);
    if (next <= static_cast<double>(s) || next > static_cast<double>(max_bytes)) break;
    s = static_cast<int64_t>(next);
  }
  return sizes;
}

}  // namespace commbench

namespace {

using namespace commbench;

struct Dtype {
  const char* name;
  at::ScalarType type;
  double exact_max;  // integers up to this are exact in the type (and so are all partial sums below it)
};
const Dtype kDtypes[] = {{"float", at::kFloat, 16777216.0},  {"double", at::kDouble, 9007199254740992.0},
                         {"bfloat16", at::kBFloat16, 256.0}, {"half", at::kHalf, 2048.0},
                         {"int32", at::kInt, 2147483647.0},  {"int64", at::kLong, 9.0e18}};

const Dtype& parse_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d;
  }
  throw_usage_error("deltatune commbench: --datatype must be float, double, bfloat16, half, int32 or int64, not '" +
                    name + "'");
}

// The values of the reducing collectives: rank r contributes a(r, k) + (i mod m) in iteration k, so
// the sum is A(k) + n·(i mod m) with A(k) = Σ_r a(r, k). m is as large as exactness allows (≤ 16):
// every partial sum stays an integer below the datatype's exact range. With so many ranks that even
// m = 1 would overflow it, a single rank contributes 1 and the others 0.
struct SumPattern {
  int n = 1;
  int64_t m = 16;
  bool single = false;
  SumPattern(int ranks, double exact_max) : n(ranks) {
    m = std::min<int64_t>(16, static_cast<int64_t>(exact_max / n) - 1);
    if (m < 1) {
      m = 1;
      single = true;
    }
  }
  int64_t a(int r, int k) const { return single ? ((r + k) % n == 0 ? 1 : 0) : (r + k) % 2 + 1; }
  int64_t sum_a(int k) const {
    int64_t s = 0;
    for (int r = 0; r < n; ++r) s += a(r, k);
    return s;
  }
};

struct Row {
  int64_t size = 0, count = 0, wrong = 0;
  double time_us = 0, algbw = 0, busbw = 0;
};

// One size: warm-up, then `iters` timed collectives, each with fresh inputs checked afterwards.
class SizeRun {
 public:
  SizeRun(comm::Communicator& comm, Op op, const Dtype& dtype, at::Device device, int64_t bytes, bool check)
      : comm_(comm), op_(op), check_(check), pattern_(comm.size(), dtype.exact_max) {
    const int n = comm.size(), r = comm.rank();
    count_ = bytes / static_cast<int64_t>(at::elementSize(dtype.type));
    const auto opts = at::TensorOptions().dtype(dtype.type).device(device);
    const auto idx = [&](int64_t first, int64_t len) {
      return at::arange(first, first + len, at::TensorOptions().dtype(at::kLong).device(device));
    };
    const int64_t block = (op == Op::AllGather || op == Op::ReduceScatter) ? count_ / n : count_;
    switch (op) {
      case Op::AllReduce:
        base_in_ = idx(0, count_).remainder(pattern_.m).to(dtype.type);
        expected_ = idx(0, count_).remainder(pattern_.m).to(at::kDouble) * n;
        in_ = at::empty({count_}, opts);
        break;
      case Op::ReduceScatter:
        base_in_ = idx(0, count_).remainder(pattern_.m).to(dtype.type);
        expected_ = idx(r * block, block).remainder(pattern_.m).to(at::kDouble) * n;
        in_ = at::empty({count_}, opts);
        out_ = at::empty({block}, opts);
        break;
      case Op::AllGather:
        base_in_ = idx(0, block).remainder(16).to(dtype.type);
        expected_ = idx(0, block).remainder(16).to(at::kDouble).repeat({n});
        rank_of_ = idx(0, n).repeat_interleave(block);
        in_ = at::empty({block}, opts);
        out_ = at::empty({count_}, opts);
        break;
      case Op::Broadcast:
        base_in_ = idx(0, count_).remainder(16).to(dtype.type);
        expected_ = idx(0, count_).remainder(16).to(at::kDouble);
        in_ = at::empty({count_}, opts);
        break;
    }
  }

  int64_t count() const { return count_; }

  // Issues iteration k's collective on freshly filled inputs; returns the seconds to completion.
  // `sync` (the MPI communicator) lines the ranks up after the fill, so that one rank's slower fill
  // or check is not timed as another rank's collective.
  double run(int k, comm::Communicator* sync) {
    fill(k);
    if (sync) sync->barrier()->wait();
    // NCCL's wait() without a timeout only orders the compute stream; a timeout makes the host wait.
    const auto timeout = comm_.backend_name() == "nccl" ? std::chrono::milliseconds(std::chrono::hours(1))
                                                         : std::chrono::milliseconds::zero();
    const auto start = std::chrono::steady_clock::now();
    comm::WorkPtr work;
    switch (op_) {
      case Op::AllReduce: work = comm_.all_reduce(in_); break;
      case Op::ReduceScatter: work = comm_.reduce_scatter(in_, out_); break;
      case Op::AllGather: work = comm_.all_gather(in_, out_); break;
      case Op::Broadcast: work = comm_.broadcast(in_, {0}); break;
    }
    work->wait(timeout);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  // Wrong elements of iteration k's result on this rank.
  int64_t wrong(int k) const {
    if (!check_) return 0;
    switch (op_) {
      case Op::AllReduce:
        return in_.to(at::kDouble).sub(pattern_.sum_a(k)).ne(expected_).sum().item<int64_t>();
      case Op::ReduceScatter:
        return out_.to(at::kDouble).sub(pattern_.sum_a(k)).ne(expected_).sum().item<int64_t>();
      case Op::AllGather:
        return out_.to(at::kDouble).sub(rank_of_.add(k).remainder(8)).ne(expected_).sum().item<int64_t>();
      case Op::Broadcast:
        return in_.to(at::kDouble).sub(k % 8 + 1).ne(expected_).sum().item<int64_t>();
    }
    return 0;
  }

 private:
  void fill(int k) {
    const int r = comm_.rank();
    switch (op_) {
      case Op::AllReduce:
      case Op::ReduceScatter: in_.copy_(base_in_).add_(pattern_.a(r, k)); break;
      case Op::AllGather: in_.copy_(base_in_).add_((r + k) % 8); break;
      case Op::Broadcast:
        // Non-roots start from -1 (not a value the root sends), so a missed broadcast counts as wrong.
        if (r == 0) {
          in_.copy_(base_in_).add_(k % 8 + 1);
        } else {
          in_.fill_(-1);
        }
        break;
    }
    if (out_.defined()) out_.fill_(-1);
  }

  comm::Communicator& comm_;
  Op op_;
  bool check_;
  SumPattern pattern_;
  int64_t count_ = 0;
  at::Tensor base_in_, expected_, rank_of_, in_, out_;
};

int run_commbench(const po::variables_map& vm) {
  // ---- options -----------------------------------------------------------------------------------
  const Op op = parse_op(vm["op"].as<std::string>());
  const Dtype& dtype = parse_dtype(vm["datatype"].as<std::string>());
  const int64_t min_bytes = parse_bytes(vm["minbytes"].as<std::string>(), "--minbytes");
  const int64_t max_bytes = parse_bytes(vm["maxbytes"].as<std::string>(), "--maxbytes");
  const double factor = vm["stepfactor"].as<double>();
  const int iters = vm["iters"].as<int>();
  const int warmup = vm["warmup_iters"].as<int>();
  const bool check = vm["check"].as<int>() != 0;
  if (min_bytes > max_bytes) {
    throw_usage_error(fmt::format("deltatune commbench: --minbytes {} is above --maxbytes {}", min_bytes, max_bytes));
  }
  if (!(factor > 1.0) && min_bytes != max_bytes) {
    throw_usage_error(fmt::format("deltatune commbench: --stepfactor must be above 1, not {}", factor));
  }
  if (iters < 1 || warmup < 0) {
    throw_usage_error("deltatune commbench: --iters must be at least 1 and --warmup_iters at least 0");
  }
  const std::string backend = vm["dist.backend"].as<std::string>();

  // ---- session -----------------------------------------------------------------------------------
  SessionOptions session_options;
  session_options.backend = backend;
  session_options.log_all_ranks = vm["log-all-ranks"].as<bool>();
  session_options.threads = vm["threads"].as<int>();
  // NCCL moves GPU buffers: the benchmark's tensors live on this rank's GPU when it may be used
  // (with auto, the session still picks MPI where ranks share a GPU; the buffers then stay on the host).
  if (backend == "nccl" && !at::hasCUDA()) {
    throw_usage_error("commbench --dist.backend nccl: no GPU is visible to this process (check nvidia-smi and "
                      "CUDA_VISIBLE_DEVICES), or use --dist.backend mpi");
  }
  session_options.device = backend == "nccl" || (backend == "auto" && at::hasCUDA()) ? "cuda" : "cpu";
  Session session(session_options);
  comm::Communicator& comm = session.comm();
  // Our own MPI communicator for barriers and statistics, so that comm's counters hold the benchmark's
  // collectives alone (with --dist.backend mpi, session.cpu_comm() is comm itself).
  const auto cpu_owned = comm::make_mpi_communicator();
  comm::Communicator& cpu = *cpu_owned;
  const int n = comm.size(), rank = comm.rank();
  const at::Device device = comm.backend_name() == "nccl" ? session.device() : at::Device(at::kCPU);

  // ---- header ------------------------------------------------------------------------------------
  const auto places = gather_placement(cpu);
  const int hosts = count_hosts(places);
  const int elem = static_cast<int>(at::elementSize(dtype.type));
  const auto sizes = benchmark_sizes(min_bytes, max_bytes, factor, op, elem, n);
  if (rank == 0) {
    fmt::print("# deltatune commbench: {} {}, {} ranks on {} host(s), backend {}\n", op_name(op), dtype.name, n,
               hosts, comm.backend_name());
    fmt::print("# minBytes {} maxBytes {} step: {}(factor) warmup iters: {} iters: {} validation: {}\n", min_bytes,
               max_bytes, factor, warmup, iters, check ? 1 : 0);
    fmt::print("#\n# Using ranks\n");
    for (size_t r = 0; r < places.size(); ++r) {
      fmt::print("#  Rank {:>3} Pid {:>7} on {} ({})\n", r, places[r].pid, places[r].host, places[r].addresses);
    }
    fmt::print("#\n");
    fmt::print("# {:>10}  {:>12}  {:>8}  {:>6}  {:>10}  {:>8}  {:>8}  {:>7}\n", "size", "count", "type", "redop",
               "time", "algbw", "busbw", "#wrong");
    fmt::print("# {:>10}  {:>12}  {:>8}  {:>6}  {:>10}  {:>8}  {:>8}  {:>7}\n", "(B)", "(elements)", "", "", "(us)",
               "(GB/s)", "(GB/s)", "");
    std::fflush(stdout);
  }

  // ---- the benchmark -----------------------------------------------------------------------------
  std::vector<Row> rows;
  comm.reset_counters();
  for (const int64_t size : sizes) {
    SizeRun bench(comm, op, dtype, device, size, check);
    for (int k = 0; k < warmup; ++k) bench.run(k, nullptr);
    double seconds = 0;
    int64_t wrong = 0;
    for (int k = 0; k < iters; ++k) {
      seconds += bench.run(k, &cpu);
      wrong += bench.wrong(k);
    }
    // The slowest rank's mean; wrong elements summed over ranks.
    at::Tensor mean = at::full({1}, seconds / iters, at::kDouble);
    at::Tensor means = at::zeros({n}, at::kDouble);
    cpu.all_gather(mean, means)->wait();
    at::Tensor wrong_all = at::full({1}, wrong, at::kLong);
    cpu.all_reduce(wrong_all)->wait();

    Row row;
    row.size = size;
    row.count = bench.count();
    row.wrong = wrong_all.item<int64_t>();
    const double time_s = means.max().item<double>();
    row.time_us = time_s * 1e6;
    row.algbw = time_s > 0 ? static_cast<double>(size) / 1e9 / time_s : 0.0;
    row.busbw = row.algbw * bus_factor(op, n);
    rows.push_back(row);
    if (rank == 0) {
      fmt::print("  {:>10}  {:>12}  {:>8}  {:>6}  {:>10.2f}  {:>8.2f}  {:>8.2f}  {:>7}\n", row.size, row.count,
                 dtype.name, redop_name(op), row.time_us, row.algbw, row.busbw, check ? std::to_string(row.wrong) : "N/A");
      std::fflush(stdout);
    }
  }

  // ---- footer and JSON ---------------------------------------------------------------------------
  int64_t total_wrong = 0;
  double busbw_sum = 0;
  for (const auto& row : rows) {
    total_wrong += row.wrong;
    busbw_sum += row.busbw;
  }
  const auto counted = comm.total_counters();
  if (rank == 0) {
    if (check) {
      fmt::print("# Wrong elements       : {} {}\n", total_wrong, total_wrong == 0 ? "OK" : "FAILED");
    } else {
      fmt::print("# Wrong elements       : not checked (--check 0)\n");
    }
    fmt::print("# Payload on rank 0    : {} bytes in {} collectives (the communicator's counters)\n", counted.bytes,
               counted.calls);
    fmt::print("# Avg bus bandwidth    : {:.4f}\n#\n", rows.empty() ? 0.0 : busbw_sum / rows.size());
    std::fflush(stdout);
    if (vm.count("json")) {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& row : rows) {
        list.push_back({{"size_bytes", row.size},  {"count", row.count},         {"dtype", dtype.name},
                        {"redop", redop_name(op)}, {"op", op_name(op)},          {"time_us", row.time_us},
                        {"algbw_gbps", row.algbw}, {"busbw_gbps", row.busbw},    {"wrong", row.wrong},
                        {"ranks", n},              {"backend", comm.backend_name()},
                        {"checked", check}});
      }
      const std::string path = vm["json"].as<std::string>();
      std::ofstream out(path);
      out << list.dump(2) << "\n";
      if (!out) throw_usage_error("deltatune commbench: cannot write --json file '" + path + "'");
    }
  }
  return total_wrong == 0 ? 0 : 1;
}

}  // namespace

Subcommand commbench_subcommand() {
  Subcommand sub;
  sub.name = "commbench";
  sub.summary = "collective bandwidth benchmark in the manner of nccl-tests (run under mpirun)";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    add_dist_options(desc);
    po::options_description own("commbench");
    own.add_options()
        ("minbytes,b", po::value<std::string>()->default_value("8"), "smallest size in bytes (suffixes K, M, G)")
        ("maxbytes,e", po::value<std::string>()->default_value("64M"), "largest size in bytes (suffixes K, M, G)")
        ("stepfactor,f", po::value<double>()->default_value(2.0), "multiply the size by this between rows")
        ("iters,n", po::value<int>()->default_value(20), "timed iterations per size")
        ("warmup_iters,w", po::value<int>()->default_value(5), "untimed iterations before them")
        ("datatype,d", po::value<std::string>()->default_value("float"),
         "float | double | bfloat16 | half | int32 | int64")
        ("op", po::value<std::string>()->default_value("allreduce"),
         "allreduce | allgather | broadcast | reducescatter")
        ("check,c", po::value<int>()->default_value(1), "verify every iteration's result (1) or not (0)")
        ("json", po::value<std::string>(), "also write the rows as a JSON list to this file (rank 0)");
    desc.add(own);
  };
  sub.run = run_commbench;
  return sub;
}

}  // namespace dt::launch
