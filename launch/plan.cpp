// launch/plan.cpp — `deltatune plan` (not filled in yet: issue 4).
#include "launch/cli.h"

namespace dt::launch {

Subcommand plan_subcommand() {
  Subcommand sub;
  sub.name = "plan";
  sub.summary = "(not implemented yet, issue 4)";
  sub.add_options = [](po::options_description& desc) { add_common_options(desc); };
  sub.run = [](const po::variables_map&) { return not_implemented("plan", "4"); };
  return sub;
}

}  // namespace dt::launch
