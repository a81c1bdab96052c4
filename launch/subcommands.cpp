#include "launch/cli.h"

namespace dt::launch {

// The order of `deltatune --help`: the daily commands first.
std::vector<Subcommand> all_subcommands() {
  return {train_subcommand(),   eval_subcommand(),    generate_subcommand(), plan_subcommand(),
          mask_subcommand(),    inspect_subcommand(), export_subcommand(),   commbench_subcommand(),
          search_subcommand()};
}

}  // namespace dt::launch
