// tests/peft/method_cases.h — the table of the table-driven method tests (test_methods.cpp).
//
// Each method's test file adds its rows with a static registration (the test executable links its
// object files directly, so static initializers run), keeping per-method rows next to their method.
#pragma once

#include <string>
#include <vector>

namespace dt::testing {

struct MethodCase {
  std::string model;              // a tiny named config: tiny-llama, tiny-t5, tiny-t5-v1_1, tiny-bert
  std::string method;             // the --method value
  std::vector<std::string> args;  // extra method options
  bool identity_at_init;          // the paper's initialization leaves the model's output unchanged
};

std::vector<MethodCase>& method_cases();
inline int add_method_cases(const std::vector<MethodCase>& rows) {
  method_cases().insert(method_cases().end(), rows.begin(), rows.end());
  return 0;
}

}  // namespace dt::testing
