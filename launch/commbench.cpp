// launch/commbench.cpp — `deltatune commbench` (not filled in yet: issue 3).
#include "launch/cli.h"

namespace dt::launch {

Subcommand commbench_subcommand() {
  Subcommand sub;
  sub.name = "commbench";
  sub.summary = "(not implemented yet, issue 3)";
  sub.add_options = [](po::options_description& desc) { add_common_options(desc); };
  sub.run = [](const po::variables_map&) { return not_implemented("commbench", "3"); };
  return sub;
}

}  // namespace dt::launch
