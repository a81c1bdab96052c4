// SentencePiece (T5's spiece.model) and WordPiece (bert-base-uncased) on the real vocabularies.
#include <gtest/gtest.h>

#include <fstream>
#include <unordered_map>

#include "model/tokenizer.h"
#include "util/error.h"

namespace dt::model::testing {
std::string source_file(const std::string& relative);  // in test_t5_golden.cpp
}

namespace dt::model {
namespace {

using testing::source_file;

// ---- SentencePiece ----------------------------------------------------------------------------

TEST(SentencePiece, T5SpecialIds) {
  const auto tok = load_tokenizer(source_file("data/tokenizers/t5-spiece.model"));
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->pad_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->decode({2}), " \xE2\x81\x87 ");  // unk decodes to " ⁇ "
}

TEST(SentencePiece, KnownIdsAndRoundTrip) {
  const auto tok = load_tokenizer(source_file("data/tokenizers/t5-spiece.model"));
  // HF T5Tokenizer("Hello world").input_ids == [8774, 296, 1]; encode adds no eos.
  EXPECT_EQ(tok->encode("Hello world"), (std::vector<int64_t>{8774, 296}));
  EXPECT_EQ(tok->decode({8774}), "Hello");
  EXPECT_EQ(tok->decode({296}), "world");
  for (const std::string text : {"it 's a charming and often affecting journey . ",
                                 "The quick brown fox jumps over the lazy dog.", "Zürich, 1998: 42%!"}) {
    const auto ids = tok->encode(text);
    ASSERT_FALSE(ids.empty());
    for (int64_t id : ids) EXPECT_NE(id, 2) << "unknown piece in: " << text;
    // SentencePiece normalizes whitespace (trailing spaces go), nothing else here.
    std::string want = text;
    while (!want.empty() && want.back() == ' ') want.pop_back();
    EXPECT_EQ(tok->decode(ids), want);
  }
  const auto ids = tok->encode("positive negative");
  EXPECT_EQ(ids.size(), 2u);  // both are single pieces of T5's vocabulary (the SST-2 label words)
  EXPECT_EQ(tok->decode(ids), "positive negative");
  EXPECT_THROW(tok->decode({32000}), dt::Error);  // T5's extra ids have no piece
}

// ---- WordPiece ---------------------------------------------------------------------------------

// Token -> id by line number of the vocabulary file, independently of the tokenizer.
int64_t vocab_id(const std::string& token) {
  static const auto ids = [] {
    std::unordered_map<std::string, int64_t> m;
    std::ifstream in(source_file("data/tokenizers/bert-base-uncased-vocab.txt"));
    std::string line;
    for (int64_t i = 0; std::getline(in, line); ++i) m.emplace(line, i);
    return m;
  }();
  return ids.at(token);
}

std::vector<int64_t> ids_of(const std::vector<std::string>& tokens) {
  std::vector<int64_t> out;
  for (const auto& t : tokens) out.push_back(vocab_id(t));
  return out;
}

class WordPiece : public ::testing::Test {
 protected:
  std::unique_ptr<Tokenizer> tok = load_tokenizer(source_file("data/tokenizers/bert-base-uncased-vocab.txt"));
};

TEST_F(WordPiece, SpecialIds) {
  EXPECT_EQ(tok->vocab_size(), 30522);
  EXPECT_EQ(tok->bos_id(), 101);  // [CLS]
  EXPECT_EQ(tok->eos_id(), 102);  // [SEP]
  EXPECT_EQ(tok->pad_id(), 0);
}

TEST_F(WordPiece, GreedyLongestMatchFirst) {
  // bert-base-uncased has no "##aff": the greedy split of "unaffable" is una ##ffa ##ble.
  EXPECT_EQ(tok->encode("unaffable"), ids_of({"una", "##ffa", "##ble"}));
  EXPECT_EQ(tok->encode("tokenization"), ids_of({"token", "##ization"}));
  EXPECT_EQ(tok->encode("Playing"), ids_of({"playing"}));
}

TEST_F(WordPiece, PunctuationAccentsAndCase) {
  EXPECT_EQ(tok->encode("Hello, World!"), ids_of({"hello", ",", "world", "!"}));
  EXPECT_EQ(tok->encode("  Caf\xC3\xA9 na\xC3\xAFve  Z\xC3\xBCRICH\t"), ids_of({"cafe", "naive", "zurich"}));
  EXPECT_EQ(tok->encode("it's"), ids_of({"it", "'", "s"}));
  EXPECT_EQ(tok->encode("\xC3\x98"), ids_of({"\xC3\xB8"}));  // Ø lower-cases to ø and has no accent to strip
}

TEST_F(WordPiece, CjkCharactersAreWords) {
  EXPECT_EQ(tok->encode("\xE4\xB8\xAD\xE6\x96\x87"), ids_of({"\xE4\xB8\xAD", "\xE6\x96\x87"}));  // 中文
}

TEST_F(WordPiece, UnknownWords) {
  EXPECT_EQ(tok->encode("\xF0\x9F\x98\x80"), std::vector<int64_t>{100});  // an emoji
  EXPECT_EQ(tok->encode(std::string(101, 'a') + " ok"), ids_of({"[UNK]", "ok"}));  // > 100 characters
  EXPECT_TRUE(tok->encode("\x01\x02  ").empty());  // control characters are dropped
}

TEST_F(WordPiece, DecodeJoinsContinuations) {
  EXPECT_EQ(tok->decode(tok->encode("Unaffable, really.")), "unaffable , really .");
}

// ---- load_tokenizer ------------------------------------------------------------------------------

TEST(LoadTokenizer, DispatchesOnExtensionAndNamesBadFiles) {
  EXPECT_EQ(load_tokenizer(source_file("data/stories260K/tok512.bin"))->vocab_size(), 512);
  EXPECT_EQ(load_tokenizer(source_file("data/stories260K/tok512.model"))->vocab_size(), 512);
  try {
    load_tokenizer("/nonexistent/vocab.txt");
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/vocab.txt"), std::string::npos);
  }
  EXPECT_THROW(load_tokenizer(source_file("tests/model/t5.cmake")), UsageError);  // unknown extension
  EXPECT_THROW(load_tokenizer(source_file("data/tokenizers/bert-base-uncased-vocab.txt") + ".model"), UsageError);
}

}  // namespace
}  // namespace dt::model
