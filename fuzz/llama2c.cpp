// fuzz/llama2c.cpp — the llama2.c checkpoint reader (--model stories260K.bin): 7 int32 of header, no
// magic number, the size implied by the header checked against the file; then the rotary permutation
// of wq/wk. Every tensor returned is summed (a view past the mapping faults here).
#include <ATen/ATen.h>

#include "fuzz/fuzz_util.h"
#include "model/llama2c.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = dt::fuzz::scratch_path("input.bin");
  dt::fuzz::write_file(path, data, size);
  dt::fuzz::expect_clean_error(path, [&] { (void)dt::model::read_llama2c_config(path); });
  dt::fuzz::expect_clean_error(path, [&] {
    const auto model = dt::model::read_llama2c(path);
    for (const auto& [name, tensor] : model.tensors) (void)tensor.to(at::kDouble).sum().item<double>();
  });
  return 0;
}
