// fuzz/tokenizer.cpp — the three tokenizer files (--tokenizer): a WordPiece vocabulary (.txt), llama2.c's
// BPE export (.bin) and a SentencePiece model (.model, parsed by the library). The first byte picks the
// kind, the rest is the file. A file that loads must then encode text (a fixed sentence and the input's
// own bytes as text) and decode what it encoded.
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const char* const kinds[] = {"vocab.txt", "tokenizer.bin", "spiece.model"};
  const std::string path = dt::fuzz::scratch_path(kinds[data[0] % 3]);
  dt::fuzz::write_file(path, data + 1, size - 1);
  std::unique_ptr<dt::model::Tokenizer> tokenizer;
  dt::fuzz::expect_clean_error(path, [&] { tokenizer = dt::model::load_tokenizer(path); });
  if (!tokenizer) return 0;
  const std::string texts[] = {"The sailors rode the breeze clear of the rocks.",
                               std::string(reinterpret_cast<const char*>(data + 1), std::min<size_t>(size - 1, 256))};
  for (const auto& text : texts) {
    dt::fuzz::expect_clean_error("", [&] {
      const std::vector<int64_t> ids = tokenizer->encode(text);
      for (int64_t id : ids) {
        if (id < 0 || id >= tokenizer->vocab_size()) {
          std::fprintf(stderr, "fuzz: encode gave id %lld outside [0, %lld)\n", static_cast<long long>(id),
                       static_cast<long long>(tokenizer->vocab_size()));
          std::abort();
        }
      }
      (void)tokenizer->decode(ids);
    });
  }
  return 0;
}
