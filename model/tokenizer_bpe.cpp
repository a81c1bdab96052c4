// model/tokenizer_bpe.cpp — llama2.c's BPE tokenizer, encode/decode as run.c does (see header).
#include "model/tokenizer_bpe.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include "util/error.h"

namespace dt::model {

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path) {
  return Llama2cTokenizer::load(path);
}

std::unique_ptr<Llama2cTokenizer> Llama2cTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_usage_error(path + ": cannot open tokenizer file: " + std::strerror(errno));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto bad = [&](const std::string& problem) {
    throw_usage_error(path + ": not a llama2.c tokenizer: " + problem);
  };
  size_t pos = 0;
  auto read_i32 = [&](const char* what) {
    if (bytes.size() - pos < 4) bad(std::string("truncated while reading ") + what);
    int32_t v;
    std::memcpy(&v, bytes.data() + pos, 4);
    pos += 4;
    return v;
  };

  auto tok = std::unique_ptr<Llama2cTokenizer>(new Llama2cTokenizer());
  tok->max_token_length_ = read_i32("max_token_length");
  if (tok->max_token_length_ <= 0 || tok->max_token_length_ > 4096)
    bad("max_token_length " + std::to_string(tok->max_token_length_) + " is out of range");
  // The vocabulary size is not stored: tokens run to the end of the file.
  while (pos < bytes.size()) {
    const std::string which = "token " + std::to_string(tok->pieces_.size());
    float score;
    if (bytes.size() - pos < 4) bad("truncated in the score of " + which);
    std::memcpy(&score, bytes.data() + pos, 4);
    pos += 4;
    int32_t len = read_i32(("the length of " + which).c_str());
    if (len < 0 || len > tok->max_token_length_)
      bad(which + " has length " + std::to_string(len) + ", outside [0, max_token_length " +
          std::to_string(tok->max_token_length_) + "]");
    if (bytes.size() - pos < static_cast<size_t>(len)) bad("truncated in the bytes of " + which);
    tok->pieces_.emplace_back(bytes.data() + pos, static_cast<size_t>(len));
    tok->scores_.push_back(score);
    pos += static_cast<size_t>(len);
  }
  // Ids 0..2 are special and 3..258 the byte fallback; a vocabulary without them is not this format.
  if (tok->pieces_.size() < 259)
    bad("only " + std::to_string(tok->pieces_.size()) +
        " tokens (needs at least 3 special + 256 byte tokens)");
  for (size_t i = 0; i < tok->pieces_.size(); ++i) tok->index_.emplace(tok->pieces_[i], int(i));
  return tok;
}

int Llama2cTokenizer::lookup(const std::string& s) const {
  auto it = index_.find(s);
  return it == index_.end() ? -1 : it->second;
}

std::vector<int64_t> Llama2cTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> tokens;
  if (text.empty()) return tokens;
  // run.c adds the dummy prefix as SentencePiece's add_dummy_prefix does.
  int space = lookup(" ");
  if (space >= 0) tokens.push_back(space);

  // One token per UTF-8 code point (at most 4 bytes), byte fallback otherwise.
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c & 0xC0) != 0x80) buf.clear();  // not a continuation byte: a new code point starts
    buf.push_back(static_cast<char>(c));
    const bool next_is_continuation =
        i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
    if (next_is_continuation && buf.size() < 4) continue;
    int id = lookup(buf);
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (unsigned char b : buf) tokens.push_back(int64_t{b} + 3);
    }
    buf.clear();
  }

  // Greedy merges: the best-scoring pair first, the leftmost on ties (strict > as in run.c).
  while (true) {
    float best_score = -1e10f;
    int best_id = -1;
    size_t best_idx = 0;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      int id = lookup(pieces_[tokens[i]] + pieces_[tokens[i + 1]]);
      if (id >= 0 && scores_[id] > best_score) {
        best_score = scores_[id];
        best_id = id;
        best_idx = i;
      }
    }
    if (best_id < 0) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_idx) + 1);
  }
  return tokens;
}

std::string Llama2cTokenizer::piece(int64_t prev, int64_t token) const {
  DT_CHECK(token >= 0 && token < vocab_size(),
           "token id " + std::to_string(token) + " is outside the vocabulary of " +
               std::to_string(vocab_size()));
  std::string p = pieces_[static_cast<size_t>(token)];
  // After BOS, SentencePiece strips the leading whitespace (the dummy prefix).
  if (prev == bos_id() && !p.empty() && p[0] == ' ') p.erase(0, 1);
  unsigned int byte = 0;
  char tail = 0;
  if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%02X>%c", &byte, &tail) == 1)
    return std::string(1, static_cast<char>(byte));
  return p;
}

std::string Llama2cTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  int64_t prev = bos_id();
  for (int64_t id : ids) {
    if (id == bos_id() || id == eos_id()) {
      prev = id;
      continue;
    }
    out += piece(prev, id);
    prev = id;
  }
  return out;
}

}  // namespace dt::model
