// tests/tasks/test_glue_tokenizers.cpp — GLUE encoding with the three real bundled tokenizers:
// layouts, round trips, the T5 split-encoding claim of glue.cpp, and the time to pre-tokenize SST-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "tasks/glue.h"

namespace dt::tasks {
namespace {

std::string data_dir() {
  const char* s = std::getenv("DELTATUNE_SOURCE_DIR");
  return std::string(s ? s : ".") + "/data";
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(GlueTokenizers, Llama2cDecoderStyleOnSst2Train) {
  auto tok = model::load_tokenizer(data_dir() + "/stories260K/tok512.bin");
  const auto ex = read_glue(data_dir() + "/glue", "sst2", "train");
  EncodeOptions o;  // decoder: BOS + text
  o.max_len = 128;
  o.num_threads = 1;
  auto t0 = std::chrono::steady_clock::now();
  const EncodedDataset single = encode_all(ex, *tok, o);
  const double s1 = seconds_since(t0);
  o.num_threads = 0;  // all hardware threads
  t0 = std::chrono::steady_clock::now();
  const EncodedDataset data = encode_all(ex, *tok, o);
  std::printf("tok512.bin: tokenized %lld sst2 train rows (%lld tokens) in %.2f s on 1 thread, "
              "%.2f s on %u\n", static_cast<long long>(data.size()),
              static_cast<long long>(data.num_tokens()), s1, seconds_since(t0),
              std::thread::hardware_concurrency());
  EXPECT_EQ(single.ids, data.ids);
  ASSERT_EQ(data.size(), 67349);
  EXPECT_EQ(data.pad_id, 0);
  int64_t untruncated = 0;
  for (int64_t i = 0; i < data.size(); ++i) {
    const int64_t* row = data.ids.data() + data.offsets[i];
    ASSERT_EQ(row[0], 1) << "row " << i << " does not start with BOS";
    for (int64_t j = 0; j < data.length(i); ++j) ASSERT_TRUE(row[j] >= 0 && row[j] < 512);
    if (data.length(i) < o.max_len && i % 97 == 0) {  // a sample of round trips
      const std::vector<int64_t> text(row + 1, row + data.length(i));
      ASSERT_EQ(tok->decode(text), ex[i].text_a) << "row " << i;
      ++untruncated;
    }
  }
  EXPECT_GT(untruncated, 600);
}

TEST(GlueTokenizers, T5StyleEqualsEncodingTheJoinedText) {
  auto tok = model::load_tokenizer(data_dir() + "/tokenizers/t5-spiece.model");
  const auto ex = read_glue(data_dir() + "/glue", "rte", "dev");
  EncodeOptions o;
  o.style = "t5";
  o.task = "rte";
  o.max_len = 512;
  int checked = 0;
  for (const Example& e : ex) {
    const EncodedExample enc = encode(e, *tok, o);
    ASSERT_EQ(enc.ids.back(), tok->eos_id());
    if (static_cast<int64_t>(enc.ids.size()) >= o.max_len) continue;
    // Encoding the halves apart must give the pieces of the whole input text.
    std::vector<int64_t> joined = tok->encode("rte sentence1: " + e.text_a + " sentence2: " + e.text_b);
    joined.push_back(tok->eos_id());
    ASSERT_EQ(enc.ids, joined) << e.text_a;
    ++checked;
  }
  EXPECT_GT(checked, 250);
  const EncodedExample first = encode(ex[0], *tok, o);
  EXPECT_EQ(tok->decode(first.ids).rfind("rte sentence1: Dana Reeve", 0), 0u) << tok->decode(first.ids);
  const auto words = label_word_ids(glue_task("rte"), *tok);
  EXPECT_EQ(tok->decode(words[1]), "not_entailment");
  // The one-step T5 head tells the classes apart by the label words' first tokens.
  for (const auto& task : glue_task_names()) {
    if (glue_task(task).regression) continue;  // stsb has no label words
    const auto first = label_first_token_ids(glue_task(task), *tok);
    ASSERT_EQ(first.size(), 2u);
    EXPECT_NE(first[0], first[1]) << task;
    EXPECT_EQ(first[0], label_word_ids(glue_task(task), *tok)[0][0]);
  }
}

TEST(GlueTokenizers, BertStyleWithTheWordPieceVocab) {
  auto tok = model::load_tokenizer(data_dir() + "/tokenizers/bert-base-uncased-vocab.txt");
  const auto ex = read_glue(data_dir() + "/glue", "rte", "dev");
  EncodeOptions o;
  o.style = "bert";
  o.max_len = 128;
  const EncodedDataset data = encode_all(ex, *tok, o);
  int64_t truncated = 0;
  for (int64_t i = 0; i < data.size(); ++i) {
    const int64_t* row = data.ids.data() + data.offsets[i];
    const int64_t n = data.length(i);
    ASSERT_LE(n, 128);
    truncated += n == 128;
    EXPECT_EQ(row[0], 101);      // [CLS]
    EXPECT_EQ(row[n - 1], 102);  // [SEP]
    EXPECT_EQ(std::count(row, row + n, 102), 2);
  }
  EXPECT_GT(truncated, 0);  // RTE premises are long: longest-first truncation happened
  const model::Batch b = collate(data, {0, 1, 2});
  EXPECT_EQ(b.input_ids.size(1), std::max({data.length(0), data.length(1), data.length(2)}));
}

TEST(GlueTokenizers, Sst2TrainTimings) {
  const auto ex = read_glue(data_dir() + "/glue", "sst2", "train");
  struct Case {
    const char* file;
    const char* style;
  } cases[] = {{"tokenizers/t5-spiece.model", "t5"}, {"tokenizers/bert-base-uncased-vocab.txt", "bert"}};
  for (const auto& c : cases) {
    auto tok = model::load_tokenizer(data_dir() + "/" + c.file);
    EncodeOptions o;
    o.style = c.style;
    o.task = "sst2";
    const auto t0 = std::chrono::steady_clock::now();
    const EncodedDataset data = encode_all(ex, *tok, o);  // all hardware threads
    std::printf("%s (%s): tokenized %lld sst2 train rows (%lld tokens) in %.2f s\n", c.file, c.style,
                static_cast<long long>(data.size()), static_cast<long long>(data.num_tokens()),
                seconds_since(t0));
    EXPECT_EQ(data.size(), 67349);
  }
}

}  // namespace
}  // namespace dt::tasks
