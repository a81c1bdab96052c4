#include "util/log.h"

#include <cstdio>

namespace dt::log {
namespace {
int g_rank = 0;
bool g_all = false;
}  // namespace

void configure(int rank, int world_size, bool all_ranks) {
  (void)world_size;
  g_rank = rank;
  g_all = all_ranks;
}

bool enabled() { return g_all || g_rank == 0; }

void write_info(const std::string& line) {
  std::fprintf(stdout, "[rank %d] %s\n", g_rank, line.c_str());
  std::fflush(stdout);
}

void write_error(const std::string& line) {
  std::fprintf(stderr, "[rank %d] error: %s\n", g_rank, line.c_str());
  std::fflush(stderr);
}

}  // namespace dt::log
