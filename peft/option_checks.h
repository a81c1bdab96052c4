// peft/option_checks.h — checks of option values that several methods share (kept out of options.h, which
// nearly every file includes, so that adding one recompiles only its users).
#pragma once

#include <cstdint>
#include <string>

#include "peft/options.h"
#include "util/error.h"

namespace dt::peft {

// The integer option `key` ("hyperformer.hidden"), which must be > 0 (UsageError naming --key otherwise).
inline int64_t positive_option(const OptionValues& values, const std::string& key) {
  const int64_t v = values.get<int64_t>(key);
  if (v <= 0) throw_usage_error("--" + key + " must be positive, got " + std::to_string(v));
  return v;
}

}  // namespace dt::peft
