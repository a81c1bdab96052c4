// launch/mask.cpp — `deltatune mask` (not filled in yet: issue 7).
#include "launch/cli.h"

namespace dt::launch {

Subcommand mask_subcommand() {
  Subcommand sub;
  sub.name = "mask";
  sub.summary = "(not implemented yet, issue 7)";
  sub.add_options = [](po::options_description& desc) { add_common_options(desc); };
  sub.run = [](const po::variables_map&) { return not_implemented("mask", "7"); };
  return sub;
}

}  // namespace dt::launch
