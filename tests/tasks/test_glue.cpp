// tests/tasks/test_glue.cpp — the bundled GLUE files (row counts and label balances from
// data/PROVENANCE.md), errors on malformed files, the three input layouts, truncation and collation.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>

#include <unistd.h>

#include "tasks/glue.h"
#include "util/error.h"

namespace dt::tasks {
namespace {

std::string source_dir() {
  const char* s = std::getenv("DELTATUNE_SOURCE_DIR");
  return s ? s : "";
}
std::string glue_dir() { return source_dir() + "/data/glue"; }

// One token per byte (id = byte + 3), so truncation and layouts can be checked by eye.
class ByteTokenizer : public model::Tokenizer {
 public:
  explicit ByteTokenizer(int64_t bos = 1) : bos_(bos) {}
  std::vector<int64_t> encode(const std::string& text) const override {
    std::vector<int64_t> ids;
    for (unsigned char c : text) ids.push_back(c + 3);
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string s;
    for (int64_t id : ids)
      if (id >= 3) s += static_cast<char>(id - 3);
    return s;
  }
  int64_t vocab_size() const override { return 259; }
  int64_t bos_id() const override { return bos_; }
  int64_t eos_id() const override { return 2; }
  int64_t pad_id() const override { return 0; }

 private:
  int64_t bos_;
};

std::vector<int64_t> bytes(const std::string& s) { return ByteTokenizer().encode(s); }
std::vector<int64_t> cat(std::initializer_list<std::vector<int64_t>> parts) {
  std::vector<int64_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// ---- the bundled files -------------------------------------------------------------------------

struct SplitFacts {
  const char* task;
  const char* split;
  size_t rows;
  int64_t label1;  // examples with label 1
};

TEST(GlueFiles, RowCountsAndLabelBalancesMatchProvenance) {
  ASSERT_FALSE(source_dir().empty()) << "DELTATUNE_SOURCE_DIR is not set (run through ctest)";
  // data/PROVENANCE.md: SST-2 37,569 / 444 positive; CoLA 6,023 / 721 acceptable;
  // RTE not_entailment (label 1) 1,241 / 131.
  const SplitFacts facts[] = {
      {"sst2", "train", 67349, 37569}, {"sst2", "dev", 872, 444},
      {"cola", "train", 8551, 6023},   {"cola", "dev", 1043, 721},
      {"rte", "train", 2490, 1241},    {"rte", "dev", 277, 131},
  };
  for (const auto& f : facts) {
    const auto examples = read_glue(glue_dir(), f.task, f.split);
    EXPECT_EQ(examples.size(), f.rows) << f.task << " " << f.split;
    int64_t ones = 0;
    for (const auto& e : examples) {
      ASSERT_TRUE(e.label == 0 || e.label == 1);
      ones += e.label;
      ASSERT_FALSE(e.text_a.empty());
      ASSERT_EQ(e.text_b.empty(), std::string(f.task) != "rte");
    }
    EXPECT_EQ(ones, f.label1) << f.task << " " << f.split;
  }
}

TEST(GlueFiles, FirstAndLastRowsAreParsedVerbatim) {
  const auto sst = read_glue(glue_dir(), "sst2", "train");
  EXPECT_EQ(sst.front().text_a, "hide new secretions from the parental units");  // trailing space gone
  EXPECT_EQ(sst.front().label, 0);
  // CoLA dev has no final newline: its last row must still be there, whole.
  const auto cola = read_glue(glue_dir(), "cola", "dev");
  EXPECT_EQ(cola.back().text_a, "John talked to Bill about himself.");
  EXPECT_EQ(cola.back().label, 1);
  EXPECT_EQ(cola[0].text_a, "The sailors rode the breeze clear of the rocks.");
  const auto rte = read_glue(glue_dir(), "rte", "dev");
  EXPECT_EQ(rte[0].text_b, "Christopher Reeve had an accident.");
  EXPECT_EQ(rte[0].label, 1);  // not_entailment
  EXPECT_EQ(rte[1].label, 0);  // entailment
}

TEST(GlueFiles, AcceptsTheTaskFolderItself) {
  EXPECT_EQ(read_glue(glue_dir() + "/SST-2", "sst2", "dev").size(), 872u);
}

TEST(GlueTasks, InfoAndLabelWords) {
  EXPECT_EQ(glue_task("cola").metric, MetricKind::Mcc);
  EXPECT_EQ(glue_task("sst2").metric, MetricKind::Accuracy);
  EXPECT_TRUE(glue_task("rte").pair);
  EXPECT_EQ(glue_task("rte").label_words, (std::vector<std::string>{"entailment", "not_entailment"}));
  EXPECT_EQ(glue_task("sst2").label_words[1], "positive");
  EXPECT_EQ(glue_task("cola").label_words[0], "unacceptable");
  ByteTokenizer tok;
  const auto ids = label_word_ids(glue_task("sst2"), tok);
  EXPECT_EQ(ids[0], cat({bytes("negative"), {2}}));
  EXPECT_EQ(label_first_token_ids(glue_task("sst2"), tok), (std::vector<int64_t>{'n' + 3, 'p' + 3}));
  // "entailment" / "not_entailment" differ in their first byte, but a task whose words share one fails.
  TaskInfo same = glue_task("sst2");
  same.label_words = {"pos", "positive"};
  EXPECT_THROW(label_first_token_ids(same, tok), Error);
}

// ---- errors ------------------------------------------------------------------------------------

class GlueErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("glue_errors_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    for (const char* d : {"SST-2", "CoLA", "RTE"}) std::filesystem::create_directories(dir_ / d);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write(const std::string& rel, const std::string& text) {
    std::ofstream(dir_ / rel, std::ios::binary) << text;
  }
  // The UsageError message of read_glue, or "" if it did not throw one.
  std::string error_of(const std::string& task, const std::string& split) {
    try {
      read_glue(dir_.string(), task, split);
    } catch (const UsageError& e) {
      return e.what();
    }
    return "";
  }
  std::filesystem::path dir_;
};

TEST_F(GlueErrors, NameFileAndLine) {
  write("SST-2/train.tsv", "sentence\tlabel\ngood film \t1\nbad\tfilm\t0\n");
  std::string msg = error_of("sst2", "train");
  EXPECT_NE(msg.find("SST-2/train.tsv:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected 2 tab-separated columns, found 3"), std::string::npos) << msg;

  write("SST-2/dev.tsv", "sentence\tlabel\ngood film\t2\n");
  msg = error_of("sst2", "dev");
  EXPECT_NE(msg.find("SST-2/dev.tsv:2: label must be 0 or 1, got '2'"), std::string::npos) << msg;

  write("RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n");
  msg = error_of("rte", "dev");
  EXPECT_NE(msg.find("RTE/dev.tsv:2: RTE label must be entailment or not_entailment, got 'maybe'"),
            std::string::npos)
      << msg;

  write("RTE/train.tsv", "sentence1\tsentence2\tlabel\n");
  msg = error_of("rte", "train");
  EXPECT_NE(msg.find("RTE/train.tsv:1: expected the RTE header"), std::string::npos) << msg;

  write("CoLA/train.tsv", "gj04\t1\t\tFine.\ngj04\t1\tMissing a column.");  // no final newline
  msg = error_of("cola", "train");
  EXPECT_NE(msg.find("CoLA/train.tsv:2: expected 4 tab-separated columns, found 3"),
            std::string::npos)
      << msg;

  write("CoLA/dev.tsv", "gj04\t1\t\tFine.\n\ngj04\t0\t*\tBad.\n");  // an empty line inside
  msg = error_of("cola", "dev");
  EXPECT_NE(msg.find("CoLA/dev.tsv:2:"), std::string::npos) << msg;
}

TEST_F(GlueErrors, UnknownTaskSplitAndMissingFile) {
  EXPECT_NE(error_of("mnli", "train").find("unknown GLUE task 'mnli' (known: sst2, cola, rte)"),
            std::string::npos);
  EXPECT_NE(error_of("sst2", "test").find("unknown GLUE split 'test'"), std::string::npos);
  const std::string msg = error_of("sst2", "train");
  EXPECT_NE(msg.find("GLUE file not found: " + (dir_ / "SST-2/train.tsv").string()),
            std::string::npos)
      << msg;
}

TEST_F(GlueErrors, CrLfAndFinalNewlineAreTolerated) {
  write("CoLA/train.tsv", "gj04\t1\t\tOne.\r\ngj04\t0\t*\tTwo .\r\n");
  const auto ex = read_glue(dir_.string(), "cola", "train");
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[1].text_a, "Two .");
  EXPECT_EQ(ex[1].label, 0);
}

// ---- encoding ----------------------------------------------------------------------------------

TEST(GlueEncode, DecoderLayout) {
  ByteTokenizer tok;
  EncodeOptions o;  // decoder, BOS, no EOS
  EXPECT_EQ(encode({"ab", "", 1}, tok, o).ids, cat({{1}, bytes("ab")}));
  EXPECT_EQ(encode({"ab", "", 1}, tok, o).label, 1);
  o.add_eos = true;
  EXPECT_EQ(encode({"ab", "", 0}, tok, o).ids, cat({{1}, bytes("ab"), {2}}));
  o.add_bos = false;
  EXPECT_EQ(encode({"ab", "cd", 0}, tok, o).ids, cat({bytes("ab"), {2}, bytes("cd"), {2}}));
  // Truncation keeps BOS/EOS and cuts the text's end.
  o = {};
  o.max_len = 4;
  o.add_eos = true;
  EXPECT_EQ(encode({"abcdef", "", 0}, tok, o).ids, cat({{1}, bytes("ab"), {2}}));
}

TEST(GlueEncode, BertLayoutAndLongestFirstTruncation) {
  ByteTokenizer tok(/*bos as [CLS]=*/101);
  EncodeOptions o;
  o.style = "bert";
  o.max_len = 10;  // 3 specials + 7 text tokens
  EXPECT_EQ(encode({"abc", "xy", 0}, tok, o).ids,
            cat({{101}, bytes("abc"), {2}, bytes("xy"), {2}}));
  // 8 + 3 tokens into 7: the longer side shrinks until it is no longer the longer one.
  EXPECT_EQ(encode({"abcdefgh", "xyz", 0}, tok, o).ids,
            cat({{101}, bytes("abcd"), {2}, bytes("xyz"), {2}}));
  // A tie takes from the second sentence first (HF's longest_first): 5 + 5 into 7 -> 4 + 3.
  EXPECT_EQ(encode({"abcde", "vwxyz", 0}, tok, o).ids,
            cat({{101}, bytes("abcd"), {2}, bytes("vwx"), {2}}));
  o.max_len = 5;
  EXPECT_EQ(encode({"abcdefgh", "", 0}, tok, o).ids, cat({{101}, bytes("abc"), {2}}));
}

// BERT pairs carry token types: [CLS] A [SEP] are type 0, B [SEP] type 1 (HF's token_type_ids);
// collate pads them with 0 and leaves them undefined for single sentences and other styles.
TEST(GlueEncode, BertPairsCarryTokenTypes) {
  ByteTokenizer tok(/*bos as [CLS]=*/101);
  EncodeOptions o;
  o.style = "bert";
  EXPECT_EQ(encode({"abc", "xy", 0}, tok, o).segment_b, 5);  // [CLS] a b c [SEP] | x y [SEP]
  EXPECT_EQ(encode({"abc", "", 0}, tok, o).segment_b, 0);
  const EncodedDataset data = encode_all({{"abc", "xy", 0}, {"a", "b", 1}}, tok, o);
  const model::Batch b = collate(data, {0, 1});
  ASSERT_TRUE(b.token_type_ids.defined());
  const auto want = at::tensor(std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1, 1,  // 8 tokens
                                                    0, 0, 0, 1, 1, 0, 0, 0},  // 5 tokens + padding
                               at::kLong).view({2, 8});
  EXPECT_TRUE(at::equal(b.token_type_ids, want)) << b.token_type_ids;
  EXPECT_FALSE(collate(encode_all({{"abc", "", 0}}, tok, o), {0}).token_type_ids.defined());
  EncodeOptions decoder;  // decoder pairs are joined by EOS and have no token types
  EXPECT_EQ(encode({"abc", "xy", 0}, tok, decoder).segment_b, 0);
}

TEST(GlueEncode, T5Layout) {
  ByteTokenizer tok(-1);  // T5 has no BOS
  EncodeOptions o;
  o.style = "t5";
  o.task = "sst2";
  EXPECT_EQ(encode({"great", "", 1}, tok, o).ids, cat({bytes("sst2 sentence: great"), {2}}));
  o.task = "rte";
  EXPECT_EQ(encode({"A b.", "C.", 1}, tok, o).ids,
            cat({bytes("rte sentence1: A b."), bytes("sentence2: C."), {2}}));
  o.task.clear();
  EXPECT_THROW(encode({"x", "", 0}, tok, o), UsageError);
}

TEST(GlueEncode, BadOptionsAreUsageErrors) {
  ByteTokenizer tok;
  EncodeOptions o;
  o.style = "gpt";
  EXPECT_THROW(encode({"x", "", 0}, tok, o), UsageError);
  o = {};
  o.max_len = 1;  // BOS alone fills it
  EXPECT_THROW(encode({"x", "", 0}, tok, o), UsageError);
  ByteTokenizer no_bos(-1);
  EXPECT_THROW(encode({"x", "", 0}, no_bos, EncodeOptions{}), UsageError);
  o = {};
  o.style = "bert";
  EXPECT_THROW(encode({"x", "", 0}, no_bos, o), UsageError);
}

TEST(GlueEncode, CollatePadsToTheBatchsLongest) {
  ByteTokenizer tok;
  const std::vector<Example> ex = {{"abc", "", 1}, {"a", "", 0}, {"abcdef", "", 1}, {"ab", "", 0}};
  const EncodedDataset data = encode_all(ex, tok, EncodeOptions{});
  ASSERT_EQ(data.size(), 4);
  EXPECT_EQ(data.offsets, (std::vector<int64_t>{0, 4, 6, 13, 16}));
  EXPECT_EQ(data.max_length(), 7);

  const model::Batch b = collate(data, {3, 0, 1});
  ASSERT_EQ(b.input_ids.sizes(), (at::IntArrayRef{3, 4}));
  EXPECT_EQ(b.input_ids.scalar_type(), at::kLong);
  EXPECT_EQ(b.attention_mask.scalar_type(), at::kLong);
  EXPECT_EQ(b.labels.scalar_type(), at::kLong);
  const auto expect_ids = at::tensor(
      std::vector<int64_t>{1, 'a' + 3, 'b' + 3, 0, 1, 'a' + 3, 'b' + 3, 'c' + 3, 1, 'a' + 3, 0, 0},
      at::kLong).view({3, 4});
  EXPECT_TRUE(at::equal(b.input_ids, expect_ids)) << b.input_ids;
  const auto expect_mask =
      at::tensor(std::vector<int64_t>{1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0}, at::kLong).view({3, 4});
  EXPECT_TRUE(at::equal(b.attention_mask, expect_mask)) << b.attention_mask;
  EXPECT_TRUE(at::equal(b.labels, at::tensor(std::vector<int64_t>{0, 1, 0}, at::kLong)));
  EXPECT_THROW(collate(data, {4}), Error);
}

// Pre-tokenizing SST-2 train (67,349 rows) with the byte tokenizer: the reading and packing cost.
TEST(GlueEncode, WholeSplitOnce) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto ex = read_glue(glue_dir(), "sst2", "train");
  const auto t1 = std::chrono::steady_clock::now();
  ByteTokenizer tok;
  EncodeOptions o;
  o.max_len = 64;
  const EncodedDataset data = encode_all(ex, tok, o);
  const auto t2 = std::chrono::steady_clock::now();
  ASSERT_EQ(data.size(), 67349);
  EXPECT_EQ(data.max_length(), 64);
  int64_t expected_tokens = 0;
  for (const auto& e : ex) expected_tokens += std::min<int64_t>(64, 1 + e.text_a.size());
  EXPECT_EQ(data.num_tokens(), expected_tokens);
  std::printf("read sst2 train: %.3f s, byte-tokenize: %.3f s, %lld tokens\n",
              std::chrono::duration<double>(t1 - t0).count(),
              std::chrono::duration<double>(t2 - t1).count(),
              static_cast<long long>(data.num_tokens()));
}

TEST(GlueEncode, ThreadCountDoesNotChangeTheResult) {
  const auto ex = read_glue(glue_dir(), "sst2", "train");
  ByteTokenizer tok;
  EncodeOptions o;
  o.num_threads = 1;
  const EncodedDataset one = encode_all(ex, tok, o);
  o.num_threads = 3;
  const EncodedDataset three = encode_all(ex, tok, o);
  EXPECT_EQ(one.ids, three.ids);
  EXPECT_EQ(one.offsets, three.offsets);
  EXPECT_EQ(one.labels, three.labels);
  o.max_len = 1;  // every example fails: the error crosses the thread boundary as itself
  EXPECT_THROW(encode_all(ex, tok, o), UsageError);
}

}  // namespace
}  // namespace dt::tasks
