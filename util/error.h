// util/error.h — one error type for the whole project, and the context every message carries.
//
// Design note: libraries throw, only launch/ exits (with code 2 for bad input, 1 for failures).
// Every message carries the rank and host that raised it and the file:line, because on a cluster
// the first question about any error is "which process, where?". A hint says what to do about it.
#pragma once

#include <stdexcept>
#include <string>

namespace dt {

// Raised for failures (I/O, communication, numerics). `what()` is the full, user-facing line.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Raised for bad user input (flags, config files, mismatched inputs). launch/ exits 2 on these.
class UsageError : public Error {
 public:
  using Error::Error;
};

// Set once by launch/ (or a test main) after MPI is up; before that the prefix names only the host.
void set_error_context(int rank, int world_size);
// "[rank 3/4 host] " or "[host] " before the context is set.
std::string error_prefix();
std::string hostname();

[[noreturn]] void throw_error(const char* file, int line, const std::string& message,
                              const std::string& hint = {});
[[noreturn]] void throw_usage_error(const std::string& message);

}  // namespace dt

// DT_CHECK(cond, message[, hint]): throws dt::Error "[rank r host] file:line: message (hint: ...)".
#define DT_CHECK(cond, ...)                                   \
  do {                                                        \
    if (!(cond)) ::dt::throw_error(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
#define DT_FAIL(...) ::dt::throw_error(__FILE__, __LINE__, __VA_ARGS__)
