#pragma once
// FNV-1a 64: a small, stable hash of bytes (the same value on every platform and in every run), for the
// identities ranks compare at start-up (config text, method descriptions, masks). Published vectors:
// tests/dist/test_agreement.cpp.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace dt {

constexpr uint64_t kFnv1aOffset = 14695981039346656037ULL;

// Continues the hash `h` over `size` bytes (start from kFnv1aOffset).
inline uint64_t fnv1a(uint64_t h, const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 1099511628211ULL;  // the FNV 64-bit prime
  }
  return h;
}

inline uint64_t fnv1a(std::string_view text) { return fnv1a(kFnv1aOffset, text.data(), text.size()); }

}  // namespace dt
