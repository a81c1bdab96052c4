// launch/method_options.h — the methods' declared options (peft/options.h) on the command line.
//
// Design note: methods declare their options as data and never see Boost.Program_options; this is the
// one place that turns those specs into options of the same type, default and help (add_method_options,
// in launch/cli.h) and the parsed values back into the methods' OptionValues.
#pragma once

#include "launch/cli.h"
#include "peft/method.h"

namespace dt::launch {

// The parsed values of every registered method's options (those with a default, and those given).
peft::OptionValues method_option_values(const po::variables_map& vm);

// The methods of --method, each created from its section of the parsed options.
peft::MethodSet method_set_from(const po::variables_map& vm);

}  // namespace dt::launch
