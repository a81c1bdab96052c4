// model/tokenizer.h — text to token ids and back.
//
// Three tokenizers, picked by the file given to --tokenizer: a SentencePiece model (`.model`, T5),
// a WordPiece vocabulary (`.txt`, BERT uncased) and llama2.c's BPE export (`.bin`, stories260K).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dt::model {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Plain pieces of `text`, no special tokens added (callers add BOS/CLS/EOS as their model wants).
  virtual std::vector<int64_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t bos_id() const = 0;  // -1 where the vocabulary has none ([CLS] for WordPiece)
  virtual int64_t eos_id() const = 0;  // [SEP] for WordPiece
  virtual int64_t pad_id() const = 0;
};

// Chooses by extension (.model, .txt, .bin); throws dt::UsageError naming the file and the problem.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace dt::model
