// dist/sampler.h — which examples each rank reads, epoch by epoch (PyTorch's DistributedSampler).
//
// Design note: every rank computes the same global order for an epoch — a permutation of the dataset
// seeded by (seed + epoch), padded by repeating its head to a multiple of the world size (or cut down
// to one, with drop_last) — and rank r takes entries r, r+W, r+2W, … So the shards are disjoint
// (up to the padding), cover the data, and every rank has the same number of examples and batches per
// epoch, which data-parallel training needs (each step is a collective).
// The shuffle is a Fisher–Yates over std::mt19937_64 with our own unbiased bounded draw: the
// engine's output sequence is fixed by the C++ standard, whereas std::shuffle and
// std::uniform_int_distribution are implementation-defined, so the order is the same on every
// compiler and standard library — a run resumed elsewhere continues exactly.
//
// Resume and re-sharding: State::position counts *global* examples of the epoch's order already
// consumed (all ranks together; it advances by W × batch per step). A run resumed at another world
// size W' continues from the same point of the same global order, because the order does not depend
// on W (only its padded tail does). A position that is not a multiple of W' is rounded down to one,
// so at most W'-1 examples are seen twice; a position past the end of the (re-padded) epoch starts
// the next epoch.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace dt::dist {

struct SamplerOptions {
  uint64_t seed = 0;
  bool shuffle = true;
  bool drop_last = false;  // cut the order to a multiple of W instead of padding it
};

class DistributedSampler {
 public:
  struct State {
    int64_t epoch = 0;
    int64_t position = 0;  // global examples of this epoch's order consumed, a multiple of W
  };

  DistributedSampler(int64_t dataset_size, int rank, int world_size, SamplerOptions options = {});

  int64_t dataset_size() const { return dataset_size_; }
  int64_t num_samples() const { return num_samples_; }  // per rank per epoch
  int64_t total_size() const { return num_samples_ * world_size_; }  // per epoch, all ranks
  // Steps per epoch with `batch_size` examples per rank; the last batch of an epoch may be short.
  int64_t batches_per_epoch(int64_t batch_size) const;

  // The global order of `epoch` (total_size() entries) and this rank's share of it.
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  std::vector<int64_t> rank_indices(int64_t epoch) const;

  // This rank's next batch (at most `batch_size` indices) from the current state; a batch never
  // spans two epochs: when the epoch is used up, the next call starts the following one.
  std::vector<int64_t> next_batch(int64_t batch_size);

  State state() const { return state_; }
  // Accepts a state saved at any world size (see the note on top).
  void set_state(State state);

 private:
  const std::vector<int64_t>& cached_order(int64_t epoch);

  int64_t dataset_size_;
  int rank_;
  int world_size_;
  SamplerOptions options_;
  int64_t num_samples_ = 0;
  State state_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_order_;
};

// Evaluation shard: rank r takes r, r+W, r+2W, … of [0, n) with no padding, so no example is counted
// twice; shards differ by at most one example (metrics are gathered as summed counts).
std::vector<int64_t> shard_indices(int64_t n, int rank, int world_size);

// An unbiased draw from [0, bound) using only the engine's specified output (rejection sampling).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound);
// Fisher–Yates permutation of [0, n) from `seed`, identical on every platform.
std::vector<int64_t> portable_permutation(int64_t n, uint64_t seed);

}  // namespace dt::dist
