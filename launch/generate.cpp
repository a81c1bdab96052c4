// launch/generate.cpp — `deltatune generate` (not filled in yet: issue 4).
#include "launch/cli.h"

namespace dt::launch {

Subcommand generate_subcommand() {
  Subcommand sub;
  sub.name = "generate";
  sub.summary = "(not implemented yet, issue 4)";
  sub.add_options = [](po::options_description& desc) { add_common_options(desc); };
  sub.run = [](const po::variables_map&) { return not_implemented("generate", "4"); };
  return sub;
}

}  // namespace dt::launch
