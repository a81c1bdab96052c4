// launch/eval.cpp — `deltatune eval` (not filled in yet: issue 8).
#include "launch/cli.h"

namespace dt::launch {

Subcommand eval_subcommand() {
  Subcommand sub;
  sub.name = "eval";
  sub.summary = "(not implemented yet, issue 8)";
  sub.add_options = [](po::options_description& desc) { add_common_options(desc); };
  sub.run = [](const po::variables_map&) { return not_implemented("eval", "8"); };
  return sub;
}

}  // namespace dt::launch
