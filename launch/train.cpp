// launch/train.cpp — `deltatune train` (not filled in yet: issue 5).
#include "launch/cli.h"

namespace dt::launch {

Subcommand train_subcommand() {
  Subcommand sub;
  sub.name = "train";
  sub.summary = "(not implemented yet, issue 5)";
  sub.add_options = [](po::options_description& desc) { add_common_options(desc); };
  sub.run = [](const po::variables_map&) { return not_implemented("train", "5"); };
  return sub;
}

}  // namespace dt::launch
