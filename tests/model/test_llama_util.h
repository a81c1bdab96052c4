// tests/model/test_llama_util.h — paths and small helpers shared by the Llama/safetensors tests.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>

#include "util/error.h"

namespace dt::model::testing {

inline std::string source_dir() {
  const char* env = std::getenv("DELTATUNE_SOURCE_DIR");
  return env != nullptr ? env : DT_SOURCE_DIR;
}
inline std::string fixture(const std::string& name) {
  return source_dir() + "/tests/fixtures/llama/" + name;
}
inline std::string stories(const std::string& name) {
  return source_dir() + "/data/stories260K/" + name;
}
// A per-process scratch path (ctest may run suites in parallel).
inline std::string scratch(const std::string& name) {
  return ::testing::TempDir() + "dt_llama_" + std::to_string(getpid()) + "_" + name;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Runs `fn`, expects a dt::UsageError whose message contains every one of `parts`.
inline void expect_usage_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected a dt::UsageError";
  } catch (const dt::UsageError& e) {
    const std::string what = e.what();
    for (const auto& p : parts) EXPECT_NE(what.find(p), std::string::npos) << "'" << p << "' not in: " << what;
  }
}

}  // namespace dt::model::testing
