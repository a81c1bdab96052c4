#include "sparse/magnitude.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "util/error.h"

namespace dt::sparse {
namespace {

constexpr int kHigh = 65536;  // raw high 16 bits of a float32 (or all 16 bits of a bf16), sign included
constexpr int kKeys = 32768;  // the same folded by the sign: the high 16 bits of |x|
constexpr uint32_t kInfHigh = 0x7F80;  // high bits of +inf; NaN above

// A contiguous range [begin, end) of flat positions of one tensor, read by one rank.
struct Piece {
  size_t tensor = 0;
  int64_t begin = 0, end = 0;
};

// A piece's data as bf16 (w16) or float32 (w32) words on the CPU: the tensor's own memory when it is
// a contiguous CPU bf16 / float32 tensor, else a float32 copy of the range (held by `copy`).
struct Words {
  at::Tensor copy;
  const uint16_t* w16 = nullptr;
  const uint32_t* w32 = nullptr;
  int64_t n = 0;
};

Words words_of(const at::Tensor& tensor, const Piece& p) {
  const at::Tensor t = tensor.detach();
  Words w;
  w.n = p.end - p.begin;
  const auto dtype = t.scalar_type();
  if (t.device().is_cpu() && t.is_contiguous() && (dtype == at::kBFloat16 || dtype == at::kFloat)) {
    if (w.n == 0) return w;
    if (dtype == at::kBFloat16) {
      w.w16 = static_cast<const uint16_t*>(t.data_ptr()) + p.begin;
    } else {
      w.w32 = static_cast<const uint32_t*>(t.data_ptr()) + p.begin;
    }
    return w;
  }
  DT_CHECK(at::isFloatingType(dtype), "top-k mask: scores must be floating point, got " + std::string(c10::toString(dtype)));
  at::Tensor part = t.reshape(-1).narrow(0, p.begin, w.n);
  if (dtype != at::kBFloat16) part = part.to(at::kFloat);  // |x| commutes with the rounding to float32
  w.copy = part.to(at::kCPU).contiguous();
  if (w.copy.scalar_type() == at::kBFloat16) {
    w.w16 = static_cast<const uint16_t*>(w.copy.data_ptr());
  } else {
    w.w32 = static_cast<const uint32_t*>(w.copy.data_ptr());
  }
  return w;
}

// Adds the counts of the raw high 16 bits of every word to h[kHigh]. Two interleaved uint32 tables,
// so that runs of equal keys do not serialize on one counter; flushed every 2^30 words.
void count_high(const Words& w, std::vector<uint32_t>& scratch, int64_t* h) {
  constexpr int64_t kChunk = int64_t{1} << 30;
  scratch.resize(2 * kHigh);
  for (int64_t c = 0; c < w.n; c += kChunk) {
    const int64_t m = std::min(kChunk, w.n - c);
    std::fill(scratch.begin(), scratch.end(), 0u);
    uint32_t* a = scratch.data();
    uint32_t* b = a + kHigh;
    int64_t i = 0;
    if (w.w16) {
      const uint16_t* x = w.w16 + c;
      for (; i + 4 <= m; i += 4) {
        ++a[x[i]];
        ++b[x[i + 1]];
        ++a[x[i + 2]];
        ++b[x[i + 3]];
      }
      for (; i < m; ++i) ++a[x[i]];
    } else {
      const uint32_t* x = w.w32 + c;
      for (; i + 4 <= m; i += 4) {
        ++a[x[i] >> 16];
        ++b[x[i + 1] >> 16];
        ++a[x[i + 2] >> 16];
        ++b[x[i + 3] >> 16];
      }
      for (; i < m; ++i) ++a[x[i] >> 16];
    }
    for (int j = 0; j < kHigh; ++j) h[j] += a[j] + b[j];
  }
}

// Adds the counts of the low 16 bits of the float32 words whose |x| has high bits `bucket`.
void count_low(const Words& w, uint32_t bucket, int64_t* lo) {
  const uint32_t* x = w.w32;
  for (int64_t i = 0; i < w.n; ++i) {
    const uint32_t key = x[i] & 0x7FFFFFFFu;
    if ((key >> 16) == bucket) ++lo[key & 0xFFFFu];
  }
}

// Appends begin + i for every word whose key (|x| as float32 bits) is above `threshold`, and for the
// first `*take` equal to it (lower index first), in increasing order. Almost every word is below the
// threshold, so blocks of 32 words are first tested together, 4 bf16 (or 2 float32) keys per 64-bit
// word: with lanes of key <= 0x7FFF (0x7FFFFFFF) and add = 0x8000 - lowest (0x80000000 - lowest), a
// lane's top bit is set after the add exactly when its key >= lowest, and no carry crosses lanes.
template <typename Word>
void emit_words(const Word* x, int64_t n, int64_t begin, uint32_t above, bool can_tie, uint32_t tie,
                int64_t* take, std::vector<int64_t>& out) {
  constexpr int kBits = 8 * sizeof(Word);
  constexpr uint32_t kKeyMask = sizeof(Word) == 2 ? 0x7FFFu : 0x7FFFFFFFu;
  constexpr uint64_t kLanes = sizeof(Word) == 2 ? 0x7FFF7FFF7FFF7FFFull : 0x7FFFFFFF7FFFFFFFull;
  constexpr uint64_t kTops = ~kLanes;
  constexpr int kBlock = 32, kPerWord = 64 / kBits;
  auto scalar = [&](int64_t from, int64_t to) {
    for (int64_t i = from; i < to; ++i) {
      const uint32_t key = static_cast<uint32_t>(x[i]) & kKeyMask;
      if (key > above) {
        out.push_back(begin + i);
      } else if (key == tie && can_tie && *take > 0) {
        out.push_back(begin + i);
        --*take;
      }
    }
  };
  int64_t i = 0;
  while (i + kBlock <= n) {
    // Keys at or above `lowest` need a look; the ties stop mattering once taken.
    const uint64_t lowest = can_tie && *take > 0 ? tie : uint64_t{above} + 1;
    uint64_t add = 0;
    for (int l = 0; l < kPerWord; ++l) add |= ((uint64_t{1} << (kBits - 1)) - lowest) << (l * kBits);
    for (; i + kBlock <= n; i += kBlock) {
      uint64_t hit = 0;
      for (int j = 0; j < kBlock / kPerWord; ++j) {
        uint64_t v;
        std::memcpy(&v, x + i + j * kPerWord, sizeof(v));
        hit |= ((v & kLanes) + add) & kTops;
      }
      if (hit) break;
    }
    if (i + kBlock > n) break;
    scalar(i, i + kBlock);
    i += kBlock;
  }
  scalar(i, n);
}

void emit(const Words& w, int64_t begin, uint32_t threshold, int64_t* take, std::vector<int64_t>& out) {
  if (w.w16) {
    // A bf16 key is its 15 bits followed by 16 zero bits: it ties with the threshold only when the
    // threshold's low half is zero, and is above it when its 15 bits are.
    const uint32_t t16 = threshold >> 16;
    emit_words(w.w16, w.n, begin, t16, (threshold & 0xFFFFu) == 0, t16, take, out);
  } else {
    emit_words(w.w32, w.n, begin, threshold, true, threshold, take, out);
  }
}

// The lowest tensor (in the given order) that holds a value the key refuses, and why.
struct Refusal {
  int64_t tensor = std::numeric_limits<int64_t>::max();
  int64_t why = 0;  // 1: NaN or infinite, 2: a negative score
  bool any() const { return why != 0; }
  void note(int64_t t, int64_t w) {
    if (t < tensor) {
      tensor = t;
      why = w;
    }
  }
};

// Checks one piece's raw histogram and folds it (by the sign) into `keys` (kKeys entries).
void check_and_fold(const Words& w, const int64_t* raw, TopKKey key, size_t tensor, Refusal& refusal, int64_t* keys) {
  int64_t non_finite = 0, negative = 0;
  for (uint32_t j = kInfHigh; j < 0x8000u; ++j) non_finite += raw[j] + raw[j | 0x8000u];
  if (key == TopKKey::Score) {
    for (uint32_t j = 0x8001u; j < 0x8000u + kInfHigh; ++j) negative += raw[j];
    if (raw[0x8000] > 0 && w.w32) {
      // float32 high bits 0x8000: -0.0 (allowed) or a negative subnormal (refused).
      for (int64_t i = 0; i < w.n; ++i) negative += (w.w32[i] >> 16) == 0x8000u && (w.w32[i] & 0xFFFFu) != 0;
    }
  }
  if (non_finite > 0) refusal.note(static_cast<int64_t>(tensor), 1);
  else if (negative > 0) refusal.note(static_cast<int64_t>(tensor), 2);
  for (int j = 0; j < kKeys; ++j) keys[j] += raw[j] + raw[j + kKeys];
}

[[noreturn]] void refuse(const Refusal& r, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  const std::string& name = tensors[static_cast<size_t>(r.tensor)].first;
  if (r.why == 1) DT_FAIL("top-k mask: '" + name + "' holds NaN or infinite values (scores must be finite)");
  DT_FAIL("top-k mask: the scores of '" + name + "' hold negative values (scores must be finite and non-negative)");
}

// Every rank's refusal; the lowest tensor wins, so every rank raises the same error.
void agree_on_refusal(comm::Communicator* comm, const Refusal& mine,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  Refusal r = mine;
  if (comm) {
    at::Tensor in = at::tensor({mine.tensor, mine.why}, at::kLong);
    at::Tensor all = at::empty({2 * comm->size()}, at::kLong);
    comm->all_gather(in, all)->wait();
    const int64_t* a = all.data_ptr<int64_t>();
    r = {};
    for (int i = 0; i < comm->size(); ++i) {
      if (a[2 * i + 1] != 0) r.note(a[2 * i], a[2 * i + 1]);
    }
  }
  if (r.any()) refuse(r, tensors);
}

// Rank-local histograms of a set of pieces: bf16 pieces (keys with zero low halves) and float32
// pieces apart, because only the latter need the low-16-bit pass.
struct Histograms {
  std::vector<int64_t> h16 = std::vector<int64_t>(kKeys, 0), h32 = std::vector<int64_t>(kKeys, 0);
};

// The threshold key and how many entries equal to it are kept (over all ranks), from the summed
// histograms; `low` (float32 pieces' low halves within the threshold bucket) is computed on demand.
struct Threshold {
  uint32_t key = 0;
  int64_t ties = 0;      // entries == key to keep, over all ranks
  int64_t local_eq = 0;  // entries == key in this rank's pieces
};

// Everything between the histograms and the emit: the bucket, the optional low pass (its counts
// summed over ranks by `sum`, a no-op on one rank), the ties.
template <typename LowPass, typename Sum>
Threshold find_threshold(const Histograms& local, const Histograms& global, int64_t k, LowPass low_pass, Sum sum) {
  int64_t above = 0;
  int bucket = kKeys - 1;
  for (; bucket > 0; --bucket) {
    const int64_t n = global.h16[bucket] + global.h32[bucket];
    if (above + n >= k) break;
    above += n;
  }
  Threshold t;
  if (global.h32[bucket] == 0) {  // only bf16 keys (low halves zero) in the bucket
    t.key = static_cast<uint32_t>(bucket) << 16;
    t.ties = k - above;
    t.local_eq = local.h16[bucket] + local.h32[bucket];
    return t;
  }
  std::vector<int64_t> lo_local(kHigh, 0);
  low_pass(static_cast<uint32_t>(bucket), lo_local.data());
  std::vector<int64_t> lo = lo_local;
  sum(lo);
  lo[0] += global.h16[bucket];
  int low = kHigh - 1;
  for (; low > 0; --low) {
    if (above + lo[low] >= k) break;
    above += lo[low];
  }
  t.key = (static_cast<uint32_t>(bucket) << 16) | static_cast<uint32_t>(low);
  t.ties = k - above;
  t.local_eq = lo_local[low] + (low == 0 ? local.h16[bucket] : 0);
  return t;
}

// Who reads what: the concatenated positions cut into `size` equal contiguous ranges, one per rank
// (pieces of tensors, in order); per tensor: whole tensors, each to the rank whose range holds its
// first position (empty ones to rank 0).
std::vector<std::vector<Piece>> reading_plan(const std::vector<model::TensorMeta>& metas, bool per_tensor, int size) {
  std::vector<int64_t> offset(metas.size() + 1, 0);
  for (size_t t = 0; t < metas.size(); ++t) offset[t + 1] = offset[t] + metas[t].numel();
  const int64_t total = offset.back();
  auto range_begin = [&](int r) { return total * r / size; };
  std::vector<std::vector<Piece>> pieces(static_cast<size_t>(size));
  if (!per_tensor) {
    for (int r = 0; r < size; ++r) {
      const int64_t lo = range_begin(r), hi = range_begin(r + 1);
      for (size_t t = 0; t < metas.size(); ++t) {
        const int64_t b = std::max(lo, offset[t]), e = std::min(hi, offset[t + 1]);
        if (b < e) pieces[r].push_back({t, b - offset[t], e - offset[t]});
      }
    }
  } else {
    int r = 0;
    for (size_t t = 0; t < metas.size(); ++t) {
      while (r + 1 < size && offset[t] >= range_begin(r + 1)) ++r;
      pieces[metas[t].numel() > 0 ? r : 0].push_back({t, 0, metas[t].numel()});
    }
  }
  return pieces;
}

}  // namespace

bool splits_top_k(const comm::Communicator* comm) {
  return comm && comm->size() > 1 && comm->backend_name() == "mpi";
}

std::vector<bool> tensors_read_by(const std::vector<model::TensorMeta>& tensors, bool per_tensor, int rank, int size) {
  DT_CHECK(size > 0 && rank >= 0 && rank < size, "tensors_read_by: rank out of range");
  std::vector<bool> read(tensors.size(), false);
  const auto plan = reading_plan(tensors, per_tensor, size);  // named: a temporary's element would dangle
  for (const Piece& p : plan[static_cast<size_t>(rank)]) read[p.tensor] = true;
  return read;
}

Mask top_k_magnitude(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const TopKOptions& options,
                     comm::Communicator* comm, TopKKey key) {
  std::vector<model::TensorMeta> metas;
  for (const auto& [name, t] : tensors) metas.push_back({name, t.sizes().vec()});
  const int64_t k = mask_count(metas, options);  // the UsageErrors of top_k_mask
  comm::Communicator* c = splits_top_k(comm) ? comm : nullptr;
  const int size = c ? c->size() : 1, rank = c ? c->rank() : 0;

  const std::vector<std::vector<Piece>> pieces = reading_plan(metas, options.per_tensor, size);
  const std::vector<Piece>& mine = pieces[static_cast<size_t>(rank)];

  // ---- select this rank's indices (sorted per piece, pieces in order)
  std::vector<int64_t> picked;
  std::vector<int64_t> piece_counts;
  std::vector<uint32_t> scratch;
  std::vector<int64_t> raw(kHigh);
  Refusal refusal;
  auto histogram = [&](const Piece& p, const Words& w, Histograms& h) {
    std::fill(raw.begin(), raw.end(), 0);
    count_high(w, scratch, raw.data());
    check_and_fold(w, raw.data(), key, p.tensor, refusal, w.w16 ? h.h16.data() : h.h32.data());
  };
  auto emit_pieces = [&](const std::vector<Piece>& ps, uint32_t threshold, int64_t take) {
    for (const Piece& p : ps) {
      const size_t before = picked.size();
      emit(words_of(tensors[p.tensor].second, p), p.begin, threshold, &take, picked);
      piece_counts.push_back(static_cast<int64_t>(picked.size() - before));
    }
    DT_CHECK(take == 0, "top-k mask: internal error, ties left over");
  };
  auto low_pass_of = [&](const std::vector<Piece>& ps) {
    return [&tensors, &ps](uint32_t bucket, int64_t* lo) {
      for (const Piece& p : ps) {
        const Words w = words_of(tensors[p.tensor].second, p);
        if (w.w32) count_low(w, bucket, lo);
      }
    };
  };

  if (!options.per_tensor) {
    Histograms local;
    for (const Piece& p : mine) histogram(p, words_of(tensors[p.tensor].second, p), local);
    agree_on_refusal(c, refusal, tensors);
    if (k == 0) {
      piece_counts.assign(mine.size(), 0);
    } else {
      // One all-reduce of both histograms (int64: counts pass 2^31 on big models).
      Histograms global = local;
      auto sum = [c](std::vector<int64_t>& v) {
        if (!c) return;
        at::Tensor t = at::from_blob(v.data(), {static_cast<int64_t>(v.size())}, at::kLong);
        c->all_reduce(t)->wait();
      };
      if (c) {
        std::vector<int64_t> both(local.h16);
        both.insert(both.end(), local.h32.begin(), local.h32.end());
        sum(both);
        std::copy(both.begin(), both.begin() + kKeys, global.h16.begin());
        std::copy(both.begin() + kKeys, both.end(), global.h32.begin());
      }
      const Threshold th = find_threshold(local, global, k, low_pass_of(mine), sum);
      // The tie budget goes to the lowest positions: ranks before this one use theirs first.
      int64_t before = 0;
      if (c) {
        at::Tensor in = at::tensor({th.local_eq}, at::kLong);
        at::Tensor all = at::empty({size}, at::kLong);
        c->all_gather(in, all)->wait();
        for (int r = 0; r < rank; ++r) before += all.data_ptr<int64_t>()[r];
      }
      emit_pieces(mine, th.key, std::clamp<int64_t>(th.ties - before, 0, th.local_eq));
    }
  } else {
    for (const Piece& p : mine) {
      const std::vector<Piece> one{p};
      Histograms h;
      histogram(p, words_of(tensors[p.tensor].second, p), h);
      const int64_t k_t = std::llround(options.keep * static_cast<double>(p.end - p.begin));
      if (refusal.any() || k_t == 0) {  // after a refusal only the checks matter
        piece_counts.push_back(0);
        continue;
      }
      const Threshold th = find_threshold(h, h, k_t, low_pass_of(one), [](std::vector<int64_t>&) {});
      emit_pieces(one, th.key, th.ties);
    }
    agree_on_refusal(c, refusal, tensors);
  }

  // ---- every rank's indices, in rank order = position order
  std::vector<int64_t> all_counts = piece_counts, all_picked = picked;
  if (c) {
    std::vector<int64_t> pieces_of(size), picked_of(size, 0);
    for (int r = 0; r < size; ++r) pieces_of[r] = static_cast<int64_t>(pieces[r].size());
    int64_t n_pieces = 0;
    for (auto n : pieces_of) n_pieces += n;
    at::Tensor counts_in = at::tensor(piece_counts, at::kLong);
    at::Tensor counts_out = at::empty({n_pieces}, at::kLong);
    c->all_gather_v(counts_in, counts_out, pieces_of)->wait();
    all_counts.assign(counts_out.data_ptr<int64_t>(), counts_out.data_ptr<int64_t>() + n_pieces);
    int64_t n_picked = 0, j = 0;
    for (int r = 0; r < size; ++r) {
      for (int64_t i = 0; i < pieces_of[r]; ++i) picked_of[r] += all_counts[j++];
      n_picked += picked_of[r];
    }
    at::Tensor idx_in = at::from_blob(picked.data(), {static_cast<int64_t>(picked.size())}, at::kLong);
    at::Tensor idx_out = at::empty({n_picked}, at::kLong);
    c->all_gather_v(idx_in, idx_out, picked_of)->wait();
    all_picked.assign(idx_out.data_ptr<int64_t>(), idx_out.data_ptr<int64_t>() + n_picked);
  }

  // ---- the Mask: per tensor its pieces' indices, concatenated in order (already increasing)
  std::vector<std::vector<std::pair<int64_t, int64_t>>> slices(tensors.size());  // (start in all_picked, count)
  std::vector<int64_t> per_tensor(tensors.size(), 0);
  int64_t cursor = 0;
  size_t j = 0;
  for (int r = 0; r < size; ++r) {
    for (const Piece& p : pieces[r]) {
      const int64_t n = all_counts[j++];
      if (n > 0) slices[p.tensor].emplace_back(cursor, n);
      per_tensor[p.tensor] += n;
      cursor += n;
    }
  }
  Mask mask;
  for (size_t t = 0; t < tensors.size(); ++t) {
    if (per_tensor[t] == 0) continue;
    at::Tensor idx = at::empty({per_tensor[t]}, at::kLong);
    int64_t* out = idx.data_ptr<int64_t>();
    for (const auto& [start, n] : slices[t]) {
      std::memcpy(out, all_picked.data() + start, static_cast<size_t>(n) * sizeof(int64_t));
      out += n;
    }
    mask.entries.push_back({tensors[t].first, metas[t].shape, idx});
  }
  DT_CHECK(mask.count() == k, "top-k mask: kept " + std::to_string(mask.count()) + " of " + std::to_string(k));
  if (c) {
    // Built from the same gathered bytes on every rank: a differing hash is a bug, caught here.
    const uint64_t h = mask.hash();
    int64_t h64;
    std::memcpy(&h64, &h, sizeof(h));
    at::Tensor in = at::tensor({h64}, at::kLong);
    at::Tensor all = at::empty({size}, at::kLong);
    c->all_gather(in, all)->wait();
    for (int r = 0; r < size; ++r) {
      DT_CHECK(all.data_ptr<int64_t>()[r] == h64, fmt::format("top-k mask: rank {} built another mask", r));
    }
  }
  return mask;
}

}  // namespace dt::sparse
