// dist/bucket.h — which gradients travel together.
//
// Design note (after c10d's compute_bucket_assignment_by_size): gradients are fused into buckets so
// that one all_reduce moves many small tensors, and buckets are formed in REVERSE registration order,
// because backward produces gradients roughly in reverse order of the forward pass: the first bucket
// then fills (and can be reduced) while backward is still running. The first bucket is kept small
// (DDP: 1 MiB) so that communication starts early; later buckets use the regular cap (25 MiB).
//
// Rules, per dtype (only tensors of one dtype share a bucket, since a bucket is one flat buffer):
//   - tensors are appended to the open bucket of their dtype; the bucket closes as soon as its size
//     reaches the cap, so a bucket may pass the cap by less than its last tensor (as in DDP: this
//     keeps the number of buckets at most about bytes / cap + 1);
//   - a tensor larger than the cap gets a bucket of its own (closing the open bucket first), so one
//     huge tensor never holds smaller ones back;
//   - the first bucket of each dtype uses `first_bucket_cap_bytes`, the following ones `bucket_cap_bytes`;
//   - buckets are numbered in the order they close; buckets still open at the end follow, in the
//     order their dtype first appeared. This numbering is the launch order of the collectives.
// The function is pure (no tensors, no communicator) so it is tested on its own.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dt::dist {

struct TensorSpec {
  std::string name;
  int64_t numel = 0;
  size_t element_size = 4;  // bytes per element
  c10::ScalarType dtype = c10::ScalarType::Float;
};

struct BucketSpec {
  std::vector<size_t> tensors;   // indices into the input, in the order they sit in the buffer
  std::vector<int64_t> offsets;  // element offset of each tensor within the bucket's buffer
  int64_t numel = 0;             // total elements
  c10::ScalarType dtype = c10::ScalarType::Float;
  size_t bytes(size_t element_size) const { return static_cast<size_t>(numel) * element_size; }
};

// `tensors` in registration order. Caps must be positive. Tensors with numel 0 are left out
// (nothing to reduce).
std::vector<BucketSpec> assign_buckets(const std::vector<TensorSpec>& tensors,
                                       size_t first_bucket_cap_bytes, size_t bucket_cap_bytes);

// "3 buckets: [0] 2 tensors 1.0 MiB, ..." — for the start-up log.
std::string describe_buckets(const std::vector<BucketSpec>& buckets,
                             const std::vector<TensorSpec>& tensors);

}  // namespace dt::dist
