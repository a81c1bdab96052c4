#include "dist/agreement.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cstring>

#include "util/error.h"
#include "util/hash.h"

namespace dt::dist {

namespace {

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// splitmix64's finalizer: every input bit affects every output bit.
uint64_t avalanche(uint64_t h) {
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

// Word-at-a-time mix (the xxhash64 round): fast enough for gigabytes of frozen weights.
struct WordHasher {
  uint64_t h = 0x27d4eb2f165667c5ULL;
  void word(uint64_t w) {
    w *= 0xc2b2ae3d27d4eb4fULL;
    w = rotl(w, 31);
    w *= 0x9e3779b97f4a7c15ULL;
    h ^= w;
    h = rotl(h, 27) * 0x9e3779b97f4a7c15ULL + 0x85ebca77c2b2ae63ULL;
  }
  void bytes(const unsigned char* p, size_t n) {
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
      uint64_t w;
      std::memcpy(&w, p + k, 8);
      word(w);
    }
    if (k < n) {
      uint64_t w = 0;
      std::memcpy(&w, p + k, n - k);
      word(w ^ (static_cast<uint64_t>(n - k) << 56));
    }
  }
};

std::string rank_list(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t k = 0; k < ranks.size(); ++k) s += (k ? ", " : "") + std::to_string(ranks[k]);
  return s;
}

// All-gathers one int64 per entry of `mine` (same length on every rank); returns size() rows.
std::vector<std::vector<int64_t>> gather(comm::Communicator& comm, const std::vector<int64_t>& mine) {
  const int64_t n = static_cast<int64_t>(mine.size());
  at::Tensor in = at::empty({n}, at::kLong);
  std::memcpy(in.data_ptr<int64_t>(), mine.data(), mine.size() * sizeof(int64_t));
  at::Tensor out = at::empty({n * comm.size()}, at::kLong);
  comm.all_gather(in, out)->wait();
  std::vector<std::vector<int64_t>> rows(comm.size());
  const int64_t* p = out.data_ptr<int64_t>();
  for (int r = 0; r < comm.size(); ++r) rows[r].assign(p + r * n, p + (r + 1) * n);
  return rows;
}

}  // namespace

uint64_t hash_string(std::string_view text) { return fnv1a(text); }

uint64_t hash_tensors(const std::vector<at::Tensor>& tensors) {
  WordHasher hasher;
  for (const at::Tensor& t : tensors) {
    DT_CHECK(t.defined(), "hash_tensors: undefined tensor");
    hasher.word(static_cast<uint64_t>(t.scalar_type()));
    hasher.word(static_cast<uint64_t>(t.dim()));
    for (int64_t d : t.sizes()) hasher.word(static_cast<uint64_t>(d));
    const at::Tensor c = t.to(at::kCPU).contiguous();  // a GPU tensor is hashed through a host copy
    hasher.bytes(static_cast<const unsigned char*>(c.data_ptr()), c.numel() * c.element_size());
  }
  return avalanche(hasher.h);
}

std::string hash_hex(uint64_t h) { return fmt::format("{:016x}", h); }

void agree_or_throw(comm::Communicator& comm,
                    const std::vector<std::pair<std::string, std::string>>& items) {
  // First the number of items: with different counts the hash all-gather would not even match.
  const auto counts = gather(comm, {static_cast<int64_t>(items.size())});
  std::vector<int> differ;
  for (int r = 1; r < comm.size(); ++r)
    if (counts[r][0] != counts[0][0]) differ.push_back(r);
  if (!differ.empty())
    DT_FAIL(fmt::format("start-up mismatch in the list of checked items: {} {} from rank 0 "
                        "({} items on rank 0)",
                        rank_list(differ), differ.size() == 1 ? "differs" : "differ", counts[0][0]),
            "every rank must run the same deltatune build");
  if (items.empty()) return;

  std::vector<int64_t> mine;
  for (const auto& [what, text] : items) {
    // The name is part of the hash, so items listed in a different order also disagree.
    uint64_t h = hash_string(what) ^ (hash_string(text) * 0x9e3779b97f4a7c15ULL);
    int64_t v;
    std::memcpy(&v, &h, sizeof(v));
    mine.push_back(v);
  }
  const auto hashes = gather(comm, mine);
  std::vector<std::string> problems;
  for (size_t k = 0; k < items.size(); ++k) {
    std::vector<int> bad;
    for (int r = 1; r < comm.size(); ++r)
      if (hashes[r][k] != hashes[0][k]) bad.push_back(r);
    if (!bad.empty())
      problems.push_back(fmt::format("'{}': {} {} from rank 0", items[k].first, rank_list(bad),
                                     bad.size() == 1 ? "differs" : "differ"));
  }
  if (problems.empty()) return;
  std::string message = "start-up mismatch in ";
  for (size_t k = 0; k < problems.size(); ++k) message += (k ? "; " : "") + problems[k];
  DT_FAIL(message, "every rank must start with the same config, backbone weights and trainable "
                   "set (compare the resolved configs printed at start-up)");
}

}  // namespace dt::dist
