// fuzz/index_codec.cpp — decoding a sparse tensor's encoded flat indices (the bytes a checkpoint's
// /indices/<name> holds; FISH and DSEE rebuild their masks from them). Bytes the decoder accepts must
// describe a mask: indices strictly increasing and inside [0, numel), and encoding them again must give
// back the same indices.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "sparse/index_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<int64_t> indices;
  int64_t numel = -1;
  bool decoded = false;
  dt::fuzz::expect_clean_error("", [&] {
    indices = dt::sparse::decode_indices(data, size, &numel);
    decoded = true;
  });
  if (!decoded) return 0;
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || indices[i] >= numel || (i > 0 && indices[i] <= indices[i - 1])) {
      std::fprintf(stderr, "fuzz: decoded index %lld at %zu is not a mask's (numel %lld)\n",
                   static_cast<long long>(indices[i]), i, static_cast<long long>(numel));
      std::abort();
    }
  }
  const std::vector<uint8_t> again = dt::sparse::encode_indices(indices, numel);
  if (dt::sparse::decode_indices(again.data(), again.size()) != indices) {
    std::fprintf(stderr, "fuzz: re-encoding the decoded indices does not round-trip\n");
    std::abort();
  }
  return 0;
}
