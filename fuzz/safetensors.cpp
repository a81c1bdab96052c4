// fuzz/safetensors.cpp — the safetensors reader (--model FILE or DIR/model.safetensors): header length,
// JSON, dtypes, shapes, offsets. Every tensor a file declares is materialized and summed, so a view
// reaching past the mapping faults here rather than in a training run.
#include <ATen/ATen.h>

#include "fuzz/fuzz_util.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = dt::fuzz::scratch_path("input.safetensors");
  dt::fuzz::write_file(path, data, size);
  dt::fuzz::expect_clean_error(path, [&] {
    const auto file = dt::model::SafetensorsFile::open(path);
    for (const auto& entry : file.entries()) {
      (void)file.tensor(entry.name).to(at::kDouble).sum().item<double>();
    }
  });
  return 0;
}
