#include "util/error.h"

#include <unistd.h>

#include <climits>
#include <cstring>

namespace dt {
namespace {
int g_rank = -1;
int g_world = -1;
}  // namespace

void set_error_context(int rank, int world_size) {
  g_rank = rank;
  g_world = world_size;
}

std::string hostname() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

std::string error_prefix() {
  if (g_rank < 0) return "[" + hostname() + "] ";
  return "[rank " + std::to_string(g_rank) + "/" + std::to_string(g_world) + " " + hostname() + "] ";
}

void throw_error(const char* file, int line, const std::string& message, const std::string& hint) {
  const char* base = std::strrchr(file, '/');
  std::string where = std::string(base ? base + 1 : file) + ":" + std::to_string(line);
  std::string text = error_prefix() + where + ": " + message;
  if (!hint.empty()) text += " (hint: " + hint + ")";
  throw Error(text);
}

void throw_usage_error(const std::string& message) { throw UsageError(message); }

}  // namespace dt
