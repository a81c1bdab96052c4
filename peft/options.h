// peft/options.h — a method's options as data, so that no method sees the command-line parser.
//
// Design note (HF PEFT's per-tuner config dataclasses): each method declares its options — key, type
// (that of the default), default, help — and reads their parsed values into its own options struct
// (LoraOptions, FishOptions, ...), checking them there. launch/ is the only code that parses: it turns
// these specs into command-line and config-file options (Boost.Program_options) and the parsed values
// back into OptionValues. Tests and tools that build methods without a command line fill OptionValues
// from the specs' defaults.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "util/error.h"

namespace dt::peft {

// The types an option may have; bool is a switch (given or not, default false).
using OptionValue = std::variant<int64_t, uint64_t, double, std::string, bool>;

struct OptionSpec {
  std::string key;            // "lora.r": the option --lora.r and the config key r of section [lora]
  OptionValue default_value;  // its type is the option's type
  std::string help;
  bool has_default = true;    // false: absent unless given (e.g. --fish.mask PATH)
};

// Parsed values by key (every option with a default, and those given).
class OptionValues {
 public:
  void set(const std::string& key, OptionValue value) { values_[key] = std::move(value); }
  bool has(const std::string& key) const { return values_.count(key) > 0; }

  template <typename T>
  const T& get(const std::string& key) const {
    auto it = values_.find(key);
    DT_CHECK(it != values_.end(), "option --" + key + " has no value (is it declared by its method?)");
    const T* value = std::get_if<T>(&it->second);
    DT_CHECK(value != nullptr, "option --" + key + " is read with another type than it was declared with");
    return *value;
  }

  // Every option of `specs` at its default (the ones without a default stay absent).
  static OptionValues defaults(const std::vector<OptionSpec>& specs) {
    OptionValues values;
    for (const auto& spec : specs) {
      if (spec.has_default) values.set(spec.key, spec.default_value);
    }
    return values;
  }

 private:
  std::map<std::string, OptionValue> values_;
};

}  // namespace dt::peft
