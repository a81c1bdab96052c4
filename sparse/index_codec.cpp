#include "sparse/index_codec.h"

#include <algorithm>
#include <cstring>

#include "util/error.h"

namespace dt::sparse {
namespace {

void put_le(std::vector<uint8_t>& out, uint64_t v, int width) {
  for (int b = 0; b < width; ++b) out.push_back(static_cast<uint8_t>(v >> (8 * b)));
}

uint64_t get_le(const uint8_t* p, int width) {
  uint64_t v = 0;
  for (int b = 0; b < width; ++b) v |= static_cast<uint64_t>(p[b]) << (8 * b);
  return v;
}

uint64_t max_delta(const std::vector<int64_t>& indices) {
  uint64_t m = 0;
  for (size_t i = 0; i < indices.size(); ++i) {
    const uint64_t d = static_cast<uint64_t>(i == 0 ? indices[0] : indices[i] - indices[i - 1]);
    m = std::max(m, d);
  }
  return m;
}

void check_sorted(const std::vector<int64_t>& indices, int64_t numel) {
  for (size_t i = 0; i < indices.size(); ++i) {
    DT_CHECK(indices[i] >= 0 && indices[i] < numel,
             "index codec: index " + std::to_string(indices[i]) + " outside [0, " + std::to_string(numel) + ")");
    DT_CHECK(i == 0 || indices[i] > indices[i - 1], "index codec: indices are not strictly increasing at " +
                                                        std::to_string(i));
  }
}

}  // namespace

int delta_width(uint64_t max_value) {
  if (max_value <= 0xFFu) return 1;
  if (max_value <= 0xFFFFu) return 2;
  if (max_value <= 0xFFFFFFFFu) return 4;
  return 8;
}

int64_t delta_bytes(const std::vector<int64_t>& indices) {
  return kIndexHeaderBytes + static_cast<int64_t>(indices.size()) * delta_width(max_delta(indices));
}

int64_t bitmap_bytes(int64_t numel) { return kIndexHeaderBytes + (numel + 7) / 8; }

int64_t encoded_index_bytes(const std::vector<int64_t>& indices, int64_t numel) {
  return std::min(delta_bytes(indices), bitmap_bytes(numel));
}

int64_t index_bytes_bound(int64_t count, int64_t numel) {
  const uint64_t widest = numel > 0 ? static_cast<uint64_t>(numel - 1) : 0;
  return std::min(kIndexHeaderBytes + count * delta_width(widest), bitmap_bytes(numel));
}

std::vector<uint8_t> encode_indices(const std::vector<int64_t>& indices, int64_t numel) {
  return encode_indices(indices, numel,
                        delta_bytes(indices) <= bitmap_bytes(numel) ? IndexEncoding::Delta : IndexEncoding::Bitmap);
}

std::vector<uint8_t> encode_indices(const std::vector<int64_t>& indices, int64_t numel, IndexEncoding forced) {
  check_sorted(indices, numel);
  std::vector<uint8_t> out;
  const int width = forced == IndexEncoding::Delta ? delta_width(max_delta(indices)) : 1;
  out.push_back(static_cast<uint8_t>(forced));
  out.push_back(static_cast<uint8_t>(width));
  put_le(out, indices.size(), 8);
  put_le(out, static_cast<uint64_t>(numel), 8);
  if (forced == IndexEncoding::Delta) {
    out.reserve(out.size() + indices.size() * width);
    int64_t prev = 0;
    for (size_t i = 0; i < indices.size(); ++i) {
      put_le(out, static_cast<uint64_t>(indices[i] - prev), width);
      prev = indices[i];
    }
  } else {
    const size_t base = out.size();
    out.resize(base + (numel + 7) / 8, 0);
    for (int64_t i : indices) out[base + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
  return out;
}

IndexEncoding encoding_of(const std::vector<uint8_t>& encoded) {
  DT_CHECK(!encoded.empty(), "index codec: empty buffer");
  return static_cast<IndexEncoding>(encoded[0]);
}

std::vector<int64_t> decode_indices(const uint8_t* data, size_t size, int64_t* numel_out) {
  DT_CHECK(size >= static_cast<size_t>(kIndexHeaderBytes), "index codec: buffer of " + std::to_string(size) +
                                                               " bytes is shorter than its header");
  const uint8_t encoding = data[0];
  const int width = data[1];
  const uint64_t count = get_le(data + 2, 8);
  const uint64_t numel = get_le(data + 10, 8);
  DT_CHECK(numel < (uint64_t{1} << 62) && count <= numel, "index codec: count " + std::to_string(count) +
                                                              " > numel " + std::to_string(numel));
  if (numel_out) *numel_out = static_cast<int64_t>(numel);
  const uint8_t* p = data + kIndexHeaderBytes;
  const size_t payload = size - kIndexHeaderBytes;
  // The header is untrusted (a checkpoint's bytes): every size is checked against the payload before it
  // sizes an allocation or a loop, and without multiplying (count * width wraps for count near 2^62).
  std::vector<int64_t> out;
  if (encoding == static_cast<uint8_t>(IndexEncoding::Delta)) {
    DT_CHECK(width == 1 || width == 2 || width == 4 || width == 8, "index codec: bad width " + std::to_string(width));
    DT_CHECK(payload % width == 0 && payload / width == count,
             "index codec: delta payload of " + std::to_string(payload) + " bytes does not hold " +
                 std::to_string(count) + " indices of " + std::to_string(width) + " bytes");
    out.reserve(count);
    uint64_t at = 0;
    for (uint64_t i = 0; i < count; ++i) {
      const uint64_t gap = get_le(p + i * width, width);
      // at < numel < 2^62 before the step; a gap that would pass numel (or wrap) is refused before adding.
      DT_CHECK((i == 0 || gap > 0) && gap < numel - at, "index codec: decoded index out of range or repeated");
      at += gap;
      out.push_back(static_cast<int64_t>(at));
    }
  } else {
    DT_CHECK(encoding == static_cast<uint8_t>(IndexEncoding::Bitmap), "index codec: unknown encoding " +
                                                                          std::to_string(encoding));
    DT_CHECK(payload == (numel + 7) / 8, "index codec: bitmap payload of " + std::to_string(payload) +
                                             " bytes for " + std::to_string(numel) + " elements");
    out.reserve(count);  // count <= numel <= 8 * payload: bounded by the bytes at hand
    for (uint64_t byte = 0; byte < payload; ++byte) {
      uint8_t bits = p[byte];
      while (bits) {
        const int b = __builtin_ctz(bits);
        const uint64_t i = byte * 8 + b;
        DT_CHECK(i < numel, "index codec: bitmap bit past the tensor");
        out.push_back(static_cast<int64_t>(i));
        bits &= bits - 1;
      }
    }
    DT_CHECK(out.size() == count, "index codec: bitmap holds " + std::to_string(out.size()) + " bits, header says " +
                                      std::to_string(count));
  }
  return out;
}

}  // namespace dt::sparse
