// util/log.h — rank-aware logging.
//
// Design note: with N ranks, N copies of every line drown the one that matters, so by default only
// rank 0 logs (`--log-all-ranks` lifts that). Every line starts with "[rank r]" so interleaved
// output from several ranks stays readable. Errors always print, on every rank.
#pragma once

#include <fmt/format.h>

#include <string>

namespace dt::log {

void configure(int rank, int world_size, bool all_ranks);
bool enabled();  // whether this rank prints info lines
void write_info(const std::string& line);
void write_error(const std::string& line);

template <typename... Args>
void info(fmt::format_string<Args...> format, Args&&... args) {
  if (enabled()) write_info(fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> format, Args&&... args) {
  write_error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace dt::log
