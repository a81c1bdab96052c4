// launch/main.cpp — `deltatune <subcommand> [options]`: dispatch, help, and the only place that exits.
//
// Exit codes: 0 success; 1 a failure while running (I/O, communication, numerics); 2 bad usage (unknown
// subcommand or option, bad value, unreadable config file, a subcommand not filled in yet); other
// documented codes come from subcommands (train's preemption code, see README).
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "launch/cli.h"
#include "launch/session.h"
#include "util/error.h"
#include "util/log.h"

namespace {

void print_overview() {
  std::cout << "deltatune — distributed, communication-efficient parameter-efficient fine-tuning\n\n"
               "usage: deltatune <subcommand> [options]      (under mpirun/srun for distributed ones)\n"
               "       deltatune <subcommand> --help\n\nsubcommands:\n";
  for (const auto& sub : dt::launch::all_subcommands()) {
    std::printf("  %-10s %s\n", sub.name.c_str(), sub.summary.c_str());
  }
  std::cout << "\nEvery option can also come from an INI file given by --config FILE; the command line wins.\n"
               "\nenvironment:\n"
               "  DELTATUNE_CACHE            where weights-file sha256 digests are cached (default\n"
               "                             $XDG_CACHE_HOME/deltatune, else ~/.cache/deltatune)\n"
               "  DELTATUNE_CPU_BF16_LINEAR  native | blocked: bf16 linears on CPUs without bf16 arithmetic\n"
               "                             (default: blocked there, ATen's own kernels elsewhere)\n"
               "  DELTATUNE_MPI_THREAD_SINGLE=1  request MPI_THREAD_FUNNELED: every MPI call runs on one MPI thread\n";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dt::launch;
  if (argc < 2) {
    print_overview();
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    print_overview();
    return 0;
  }
  const auto subs = all_subcommands();
  const Subcommand* sub = nullptr;
  for (const auto& s : subs) {
    if (s.name == name) sub = &s;
  }
  if (!sub) {
    std::cerr << "deltatune: unknown subcommand '" << name << "' (see deltatune --help)\n";
    return 2;
  }
  try {
    po::options_description desc("deltatune " + sub->name + " options");
    sub->add_options(desc);
    const std::vector<std::string> args(argv + 2, argv + argc);
    const po::variables_map vm = parse_options(*sub, desc, args);
    if (vm.count("help")) {
      std::cout << "deltatune " << sub->name << " — " << sub->summary << "\n\n";
      if (!sub->positional.empty()) {
        std::cout << "usage: deltatune " << sub->name;
        for (const auto& p : sub->positional) std::cout << " <" << p << ">";
        std::cout << " [options]\n\n";
      }
      std::cout << desc << "\n";
      return 0;
    }
    if (vm.count("print-config")) {
      std::cout << render_config(desc, vm);
      return 0;
    }
    const int code = sub->run(vm);
    shutdown_mpi(code, /*error=*/false);
    return code;
  } catch (const dt::UsageError& e) {
    std::cerr << e.what() << "\n";
    shutdown_mpi(2, /*error=*/true);
    return 2;
  } catch (const std::exception& e) {
    dt::log::error("deltatune {}: {}", name, e.what());
    shutdown_mpi(1, /*error=*/true);
    return 1;
  }
}
