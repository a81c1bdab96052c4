// launch/inspect.cpp — `deltatune inspect` (not filled in yet: issue 8).
#include "launch/cli.h"

namespace dt::launch {

Subcommand inspect_subcommand() {
  Subcommand sub;
  sub.name = "inspect";
  sub.summary = "(not implemented yet, issue 8)";
  sub.add_options = [](po::options_description& desc) { add_common_options(desc); };
  sub.run = [](const po::variables_map&) { return not_implemented("inspect", "8"); };
  return sub;
}

}  // namespace dt::launch
