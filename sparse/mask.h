// sparse/mask.h — a sparse mask: sorted flat indices per tensor, chosen by top-k of a score.
//
// Design note: a mask is what FISH trains over and what every rank must agree on, so it is plain
// data — per tensor its name, shape and strictly increasing int64 flat indices (T5-3B has > 2^31
// parameters; a flat position over all tensors needs 64 bits) — with a content hash for the start-up
// agreement. Selection (FISH's create_mask_gradient): the k largest scores over ALL eligible tensors
// together (or k_t per tensor with per_tensor), with k = round(keep x eligible) or an exact count.
// Ties are broken deterministically by position: tensors in their given order, then lower flat index
// first — the same answer on every rank and every run. The k-th largest value is found by a radix
// select on the float bits (two histogram passes, O(n), no sort of the whole model); scores must be
// finite and >= 0 (Fisher, |W|, uniform noise). (FISH's code keeps int(keep x all) - head entries and
// uses torch.topk, whose ties are unspecified; we keep round(keep x eligible), head excluded.)
// Files: safetensors (model/safetensors.h) with one I64 tensor of indices per masked tensor and the
// shapes, count, hash and how it was made in __metadata__; tensors with no kept entry are omitted.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"

namespace dt::sparse {

struct MaskEntry {
  std::string name;
  std::vector<int64_t> shape;
  at::Tensor indices;  // int64, 1-D, strictly increasing flat indices into the tensor
  int64_t count() const { return indices.numel(); }
  int64_t numel() const;
};

struct Mask {
  std::vector<MaskEntry> entries;                // in the backbone's registration order
  std::map<std::string, std::string> metadata;   // how it was made (saved with it)
  int64_t count() const;
  const MaskEntry* find(const std::string& name) const;
  // FNV-1a 64 over names, shapes and index bytes: equal masks, equal hashes, on any machine.
  uint64_t hash() const;
  std::string hash_hex() const;
};

struct TopKOptions {
  double keep = 0.005;     // fraction of the eligible parameters
  int64_t count = 0;       // > 0: exactly this many (global), overrides keep
  bool per_tensor = false; // round(keep x numel) in every tensor instead of one global top-k
};

// How many entries a mask over `tensors` keeps (closed form: what plan reports). UsageError when the
// options ask for more than there are, or for a count with per_tensor.
int64_t mask_count(const std::vector<model::TensorMeta>& tensors, const TopKOptions& options);

// The top-k mask of `scores` (name, tensor), see the note above.
Mask top_k_mask(const std::vector<std::pair<std::string, at::Tensor>>& scores, const TopKOptions& options);
// The same mask with the scores made one tensor at a time: score(t) gives the float32 scores of
// tensors[t] (its shape) and is called up to three times per tensor (it must give the same values each
// time); only one tensor's scores are alive at once (FISH's magnitude selection of a 3B model scores
// one weight at a time instead of holding float32 |W| of every weight). Bit-identical to top_k_mask.
// (FISH now selects through sparse/magnitude.h's top_k_magnitude: the same mask from the weights'
// own bits, in plain loops, split across ranks.)
using ScoreFn = std::function<at::Tensor(size_t)>;
Mask top_k_mask_streaming(const std::vector<model::TensorMeta>& tensors, const ScoreFn& score,
                          const TopKOptions& options);
// The k largest of ONE score vector set (global top-k), returned per tensor; exposed for tests.
std::vector<at::Tensor> top_k_indices(const std::vector<at::Tensor>& scores, int64_t k);

// Save / load (safetensors). load checks the file's own consistency (sorted, in range, hash) and
// throws dt::UsageError naming the file; check_mask_fits names a tensor whose name or shape differs.
void save_mask(const Mask& mask, const std::string& path);
Mask load_mask(const std::string& path);
// The mask's total count from the file's header alone (plan: no data read).
int64_t mask_file_count(const std::string& path);
void check_mask_fits(const Mask& mask, const std::vector<model::TensorMeta>& eligible, const std::string& source);

}  // namespace dt::sparse
