// dist/sampler.cpp — see sampler.h.
#include "dist/sampler.h"

#include <algorithm>
#include <numeric>
#include <string>
#include <utility>

#include "util/error.h"

namespace dt::dist {

uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  DT_CHECK(bound > 0, "uniform_below: empty range");
  // 2^64 mod bound values at the bottom would make r % bound favour small results: redraw them.
  const uint64_t threshold = (0 - bound) % bound;
  while (true) {
    const uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

std::vector<int64_t> portable_permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(n);
  std::iota(p.begin(), p.end(), int64_t{0});
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(i) + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

std::vector<int64_t> shard_indices(int64_t n, int rank, int world_size) {
  DT_CHECK(world_size > 0 && rank >= 0 && rank < world_size,
           "shard_indices: rank " + std::to_string(rank) + " outside world " +
               std::to_string(world_size));
  std::vector<int64_t> out;
  for (int64_t i = rank; i < n; i += world_size) out.push_back(i);
  return out;
}

DistributedSampler::DistributedSampler(int64_t dataset_size, int rank, int world_size,
                                       SamplerOptions options)
    : dataset_size_(dataset_size), rank_(rank), world_size_(world_size), options_(options) {
  DT_CHECK(world_size > 0 && rank >= 0 && rank < world_size,
           "DistributedSampler: rank " + std::to_string(rank) + " outside world " +
               std::to_string(world_size));
  DT_CHECK(dataset_size > 0, "DistributedSampler: empty dataset");
  if (options_.drop_last) {
    num_samples_ = dataset_size / world_size;
    DT_CHECK(num_samples_ > 0, "DistributedSampler: drop_last with " + std::to_string(dataset_size) +
                                   " examples over " + std::to_string(world_size) +
                                   " ranks leaves none");
  } else {
    num_samples_ = (dataset_size + world_size - 1) / world_size;
  }
}

int64_t DistributedSampler::batches_per_epoch(int64_t batch_size) const {
  DT_CHECK(batch_size > 0, "batches_per_epoch: batch size must be positive");
  return (num_samples_ + batch_size - 1) / batch_size;
}

std::vector<int64_t> DistributedSampler::epoch_order(int64_t epoch) const {
  std::vector<int64_t> order;
  if (options_.shuffle) {
    order = portable_permutation(dataset_size_, options_.seed + static_cast<uint64_t>(epoch));
  } else {
    order.resize(dataset_size_);
    std::iota(order.begin(), order.end(), int64_t{0});
  }
  const int64_t total = total_size();
  // Padding repeats the head of the order (wrapping around when there are fewer examples than ranks).
  for (int64_t i = 0; static_cast<int64_t>(order.size()) < total; ++i) order.push_back(order[i]);
  order.resize(total);
  return order;
}

std::vector<int64_t> DistributedSampler::rank_indices(int64_t epoch) const {
  const std::vector<int64_t> order = epoch_order(epoch);
  std::vector<int64_t> mine;
  mine.reserve(num_samples_);
  for (int64_t i = rank_; i < total_size(); i += world_size_) mine.push_back(order[i]);
  return mine;
}

const std::vector<int64_t>& DistributedSampler::cached_order(int64_t epoch) {
  if (cached_epoch_ != epoch) {
    cached_order_ = epoch_order(epoch);
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

std::vector<int64_t> DistributedSampler::next_batch(int64_t batch_size) {
  DT_CHECK(batch_size > 0, "next_batch: batch size must be positive");
  if (state_.position >= total_size()) state_ = {state_.epoch + 1, 0};
  const std::vector<int64_t>& order = cached_order(state_.epoch);
  const int64_t k = state_.position / world_size_;  // this rank's position in its share
  const int64_t n = std::min(batch_size, num_samples_ - k);
  std::vector<int64_t> batch(n);
  for (int64_t j = 0; j < n; ++j) batch[j] = order[(k + j) * world_size_ + rank_];
  state_.position += n * world_size_;
  return batch;
}

void DistributedSampler::set_state(State state) {
  DT_CHECK(state.epoch >= 0 && state.position >= 0,
           "DistributedSampler: negative epoch or position in a resumed state");
  state.position -= state.position % world_size_;
  if (state.position >= total_size()) state = {state.epoch + 1, 0};
  state_ = state;
}

}  // namespace dt::dist
