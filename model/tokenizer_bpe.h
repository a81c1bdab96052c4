// model/tokenizer_bpe.h — llama2.c's BPE tokenizer export (`tok512.bin`, `tokenizer.bin`).
//
// Design note: the file is int32 max_token_length, then per token: float32 merge score, int32 byte
// length, the bytes. Encoding is exactly llama2.c run.c's `encode` (so a prompt gives the same ids
// as run.c): a dummy-prefix " " token before non-empty text, one token per UTF-8 code point (byte
// fallback: raw byte b -> id b + 3 when the code point is not in the vocabulary), then repeatedly
// merge the adjacent pair whose concatenation is the vocabulary entry with the best score. Decoding
// drops the leading space of the first piece after BOS and turns "<0xXX>" pieces into raw bytes.
// Special ids: <unk> 0 (also used as padding: the vocabulary has no pad), BOS 1, EOS 2.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/tokenizer.h"

namespace dt::model {

class Llama2cTokenizer : public Tokenizer {
 public:
  // Throws dt::UsageError "<path>: <problem>" for unreadable or malformed files.
  static std::unique_ptr<Llama2cTokenizer> load(const std::string& path);

  std::vector<int64_t> encode(const std::string& text) const override;
  // Skips BOS/EOS; decodes as if the ids followed a BOS (so decode(encode(s)) == s).
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int64_t bos_id() const override { return 1; }
  int64_t eos_id() const override { return 2; }
  int64_t pad_id() const override { return 0; }

  // run.c's decode(prev, token): the text `token` adds after `prev` (for streaming output).
  std::string piece(int64_t prev, int64_t token) const;
  float score(int64_t id) const { return scores_.at(static_cast<size_t>(id)); }

 private:
  int lookup(const std::string& s) const;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> index_;
  int max_token_length_ = 0;
};

// What model/tokenizer.cpp's load_tokenizer calls for `.bin` files.
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path);

}  // namespace dt::model
