// sparse/index_codec.h — compact storage of one tensor's sorted flat indices (masks in checkpoints).
//
// Design note: a FISH mask keeps ~0.5% of each tensor, so its indices dominate what a checkpoint adds
// besides the values. Two encodings, whichever is smaller for the tensor at hand:
//   delta   the first index, then the gaps between consecutive indices, all as unsigned integers of
//           the smallest width (1, 2, 4 or 8 bytes) that holds the largest of them;
//   bitmap  one bit per element of the tensor (bit i of byte i/8, least significant first).
// Dense masks (> 1/8 of the tensor at 1-byte width, less at wider ones) pick the bitmap, sparse ones
// the deltas. Flat indices are int64 throughout: T5-3B has tensors of 32M elements but > 2^31
// parameters in all, and a flat index over a concatenation must not overflow.
// Layout (little-endian): u8 encoding (0 delta, 1 bitmap), u8 width, u64 count, u64 numel, payload.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dt::sparse {

enum class IndexEncoding : uint8_t { Delta = 0, Bitmap = 1 };

inline constexpr int64_t kIndexHeaderBytes = 18;

// Smallest of 1, 2, 4, 8 bytes that holds `max_value`.
int delta_width(uint64_t max_value);
// Bytes of each encoding (header included) for sorted `indices` into a tensor of `numel` elements.
int64_t delta_bytes(const std::vector<int64_t>& indices);
int64_t bitmap_bytes(int64_t numel);
// What encode_indices will produce, without producing it.
int64_t encoded_index_bytes(const std::vector<int64_t>& indices, int64_t numel);
// An upper bound from counts alone (plan: no mask yet): the widest gap is below numel.
int64_t index_bytes_bound(int64_t count, int64_t numel);

// `indices` must be strictly increasing and in [0, numel) (dt::Error otherwise).
std::vector<uint8_t> encode_indices(const std::vector<int64_t>& indices, int64_t numel);
std::vector<uint8_t> encode_indices(const std::vector<int64_t>& indices, int64_t numel, IndexEncoding forced);
// Throws dt::Error on a truncated or inconsistent buffer.
std::vector<int64_t> decode_indices(const uint8_t* data, size_t size, int64_t* numel = nullptr);
IndexEncoding encoding_of(const std::vector<uint8_t>& encoded);

}  // namespace dt::sparse
