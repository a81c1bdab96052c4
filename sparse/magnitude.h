// sparse/magnitude.h — the top-k mask of |W| (or of non-negative scores) read from the tensors' own
// bits, the work split across ranks.
//
// Design note: top_k_mask over a 3B-parameter backbone spends minutes in torch ops per tensor (a
// float32 copy, shifts, compares, masked_select, nonzero; three passes) and every rank repeats it. The
// key of |x| is its bit pattern with the sign cleared: non-negative floats order like their bits, and
// bf16 is the top half of float32, so a bf16 weight's 15 non-sign bits are the high 16 bits of its
// float32 |x|. One plain loop per tensor builds a 65536-bin histogram of the high 16 bits (folded to
// 32768 by the sign); the threshold bucket follows; float32 tensors (only) take a second loop for a
// low-16-bit histogram inside that bucket; a last loop emits the sorted indices of the entries above
// the threshold and the first ties at it. That is the radix select of mask.cpp on the same keys, so
// the mask is bit-identical to top_k_mask on |W| as float32, ties included (tensors in their given
// order, then lower flat index first).
//
// Across ranks (global top-k): the concatenation of all tensors is cut into size() equal contiguous
// ranges of positions; each rank reads only its range, the histograms are summed by one int64
// all-reduce (a second one for the float32 low bits, only when the threshold bucket holds float32
// entries), and each rank's count of entries AT the threshold is all-gathered, so the tie budget goes
// to the lowest global positions: rank r keeps min(its ties, budget - ties of ranks before r). The
// per-rank indices are all-gathered (ranks in order = positions in order), every rank builds the same
// Mask, and the hashes are compared. Per-tensor top-k: whole tensors are dealt to ranks by position,
// each selected alone, then gathered the same way. Every rank must pass the same tensors (names,
// shapes, dtypes, order); the values need only be equal where a rank reads them.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "sparse/mask.h"

namespace dt::sparse {

enum class TopKKey {
  Magnitude,  // |x|: NaN / inf are refused, naming the tensor
  Score,      // x itself, which must be finite and >= 0 (-0.0 counts as 0): Fisher, random scores
};

// The mask top_k_mask would give on {name, |t| as float32} (Magnitude) or on {name, t} (Score), bit
// for bit. Tensors: bf16 and float32 are read in place when on the CPU and contiguous; any other
// floating dtype or device is copied to float32 on the CPU one tensor (or rank range) at a time.
// comm null, of size 1 or not "mpi" (the collectives carry CPU tensors): this process does all, as
// top_k_mask would on every rank. Otherwise collective: every rank calls it with the
// same tensors and options and gets the identical Mask; an error on any rank (a NaN, a negative
// score) is raised on every rank, naming the lowest such tensor.
Mask top_k_magnitude(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const TopKOptions& options,
                     comm::Communicator* comm = nullptr, TopKKey key = TopKKey::Magnitude);

// Whether top_k_magnitude splits its work over `comm` (more than one rank over "mpi": the collectives
// carry CPU tensors); otherwise every rank selects alone. The sharded Fisher follows the same rule.
bool splits_top_k(const comm::Communicator* comm);

// Which of `tensors` rank `rank` of `size` reads in top_k_magnitude (per_tensor as its TopKOptions
// say): a caller that makes scores (the sharded Fisher, sparse/fisher.h) need only fill these.
std::vector<bool> tensors_read_by(const std::vector<model::TensorMeta>& tensors, bool per_tensor, int rank, int size);

}  // namespace dt::sparse
