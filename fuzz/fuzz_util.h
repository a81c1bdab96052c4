// fuzz/fuzz_util.h — what every libFuzzer target of fuzz/ shares.
//
// Design note: the parsers read files (they map them, stat them, pick a tokenizer by extension), so a
// target writes each input to a scratch file of this process and hands the parser its path, exactly as
// `--model`, `--tokenizer`, `--config` or `--resume` would. The rule every target checks: bad bytes are
// answered by a dt::Error naming the file; a crash, a sanitizer report or any other exception (a
// c10::Error from torch, std::out_of_range from a stoll, bad_alloc from a size taken on trust) is a
// finding, and abort() makes libFuzzer save the input that caused it (bench/fuzz.py counts those).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "util/error.h"

namespace dt::fuzz {

// $TMPDIR/deltatune-fuzz-<pid>/<name>; the folder is made on first use.
inline std::string scratch_path(const std::string& name) {
  const char* tmp = std::getenv("TMPDIR");
  const std::filesystem::path dir =
      std::filesystem::path(tmp && *tmp ? tmp : "/tmp") / ("deltatune-fuzz-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

inline void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

// Runs `parse`. A dt::Error is the expected answer to bad input, and must name `must_name` when that is
// not empty (the user has to learn which file was bad); anything else thrown aborts.
template <typename Parse>
void expect_clean_error(const std::string& must_name, Parse&& parse) {
  try {
    parse();
  } catch (const dt::Error& e) {
    if (!must_name.empty() && std::string(e.what()).find(must_name) == std::string::npos) {
      std::fprintf(stderr, "fuzz: the error does not name %s: %s\n", must_name.c_str(), e.what());
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: not a dt::Error: %s\n", e.what());
    std::abort();
  }
}

}  // namespace dt::fuzz
