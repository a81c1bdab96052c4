// tests/tasks/test_glue.cpp — the bundled GLUE files (row counts and label balances from
// data/PROVENANCE.md), errors on malformed files, the three input layouts, truncation and collation,
// STS-B's regression targets, and each task's headline score.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <utility>

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
  // RTE not_entailment (label 1) 1,241 / 131; MRPC equivalent (1) 2,474 of 3,668 (0: 1,194) /
  // 279 of 408 (0: 129); WNLI 1 312 of 635 (0: 323) / 31 of 71 (0: 40).
  const SplitFacts facts[] = {
      {"sst2", "train", 67349, 37569}, {"sst2", "dev", 872, 444},
      {"cola", "train", 8551, 6023},   {"cola", "dev", 1043, 721},
      {"rte", "train", 2490, 1241},    {"rte", "dev", 277, 131},
      {"mrpc", "train", 3668, 2474},   {"mrpc", "dev", 408, 279},
      {"wnli", "train", 635, 312},     {"wnli", "dev", 71, 31},
  };
  for (const auto& f : facts) {
    const auto examples = read_glue(glue_dir(), f.task, f.split);
    EXPECT_EQ(examples.size(), f.rows) << f.task << " " << f.split;
    int64_t ones = 0;
    for (const auto& e : examples) {
      ASSERT_TRUE(e.label == 0 || e.label == 1);
      ones += e.label;
      ASSERT_FALSE(e.text_a.empty());
      ASSERT_EQ(e.text_b.empty(), !glue_task(f.task).pair);
      ASSERT_EQ(e.score, 0.0);
    }
    EXPECT_EQ(ones, f.label1) << f.task << " " << f.split;
  }
}

TEST(GlueFiles, StsbScoresMatchProvenance) {
  // data/PROVENANCE.md: STS-B train 5,749 and dev 1,500 rows, scores 0–5 written as "5.000", "1.4", "3".
  const auto train = read_glue(glue_dir(), "stsb", "train");
  const auto dev = read_glue(glue_dir(), "stsb", "dev");
  EXPECT_EQ(train.size(), 5749u);
  EXPECT_EQ(dev.size(), 1500u);
  for (const auto* split : {&train, &dev}) {
    for (const auto& e : *split) {
      ASSERT_GE(e.score, 0.0);
      ASSERT_LE(e.score, 5.0);
      ASSERT_EQ(e.label, 0);
      ASSERT_FALSE(e.text_a.empty());
      ASSERT_FALSE(e.text_b.empty());
    }
  }
  // Sum of the dev scores, computed independently from the file with
  //   python3 -c "from fractions import Fraction as F; rows = open('data/glue/STS-B/dev.tsv',
  //     encoding='utf-8').read().split('\n')[1:-1]; print(sum(F(r.split('\t')[9]) for r in rows))"
  // = 354586133333333333/100000000000000 = 3545.86133333333333 exactly (the decimal strings summed as
  // rationals; math.fsum of the floats gives 3545.8613333333333). Summing doubles in file order may
  // round differently in the last bits, hence the tolerance.
  double sum = 0;
  for (const auto& e : dev) sum += e.score;
  EXPECT_NEAR(sum, 3545.86133333333333, 1e-9);
  double min = 5, max = 0;
  for (const auto& e : dev) min = std::min(min, e.score), max = std::max(max, e.score);
  EXPECT_EQ(min, 0.0);
  EXPECT_EQ(max, 5.0);
  // Mixed formats: "5.000", "4.750" and, last, "0"; 2.33333333333333 occurs written out in full.
  EXPECT_EQ(dev[0].text_a, "A man with a hard hat is dancing.");
  EXPECT_EQ(dev[0].text_b, "A man wearing a hard hat is dancing.");
  EXPECT_EQ(dev[0].score, 5.0);
  EXPECT_EQ(dev[1].score, 4.75);
  EXPECT_EQ(dev.back().text_a, "New video shows US police officers beating mentally-ill man");
  EXPECT_EQ(dev.back().score, 0.0);
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
  // MRPC: the BOM before the header is gone (else the header check fails); fields with an unbalanced
  // `"` stay as they are, and the row after them is still its own row.
  const auto mrpc = read_glue(glue_dir(), "mrpc", "dev");
  EXPECT_EQ(mrpc[0].label, 1);
  EXPECT_EQ(mrpc[0].text_a,
            "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy .");
  EXPECT_EQ(mrpc[0].text_b, "\" The foodservice pie business does not fit our long-term growth strategy .");
  EXPECT_EQ(mrpc.back().text_b,
            "In Soviet times the Beatles ' music \" was considered propaganda of an alien ideology .");
  const auto mrpc_train = read_glue(glue_dir(), "mrpc", "train");
  EXPECT_EQ(mrpc_train[0].text_a.substr(0, 30), "Amrozi accused his brother , w");
  EXPECT_EQ(mrpc_train[1].label, 0);
  const auto wnli = read_glue(glue_dir(), "wnli", "dev");
  EXPECT_EQ(wnli[0].text_a, "The drain is clogged with hair. It has to be cleaned.");
  EXPECT_EQ(wnli[0].text_b, "The hair has to be cleaned.");
  EXPECT_EQ(wnli[0].label, 0);
  EXPECT_EQ(wnli[1].label, 1);
  EXPECT_EQ(wnli.back().text_b, "Eric was not particularly eager to see it.");
}

TEST(GlueFiles, AcceptsTheTaskFolderItself) {
  EXPECT_EQ(read_glue(glue_dir() + "/SST-2", "sst2", "dev").size(), 872u);
}

TEST(GlueTasks, InfoAndLabelWords) {
  EXPECT_EQ(glue_task_names(), (std::vector<std::string>{"sst2", "cola", "rte", "mrpc", "stsb", "wnli"}));
  EXPECT_EQ(glue_task("cola").metric, MetricKind::Mcc);
  EXPECT_EQ(glue_task("sst2").metric, MetricKind::Accuracy);
  EXPECT_EQ(glue_task("mrpc").metric, MetricKind::F1);
  EXPECT_EQ(glue_task("stsb").metric, MetricKind::Correlation);
  EXPECT_EQ(glue_task("wnli").metric, MetricKind::Accuracy);
  EXPECT_EQ(glue_task("mrpc").dir, "MRPC");
  EXPECT_EQ(glue_task("stsb").dir, "STS-B");
  EXPECT_EQ(glue_task("wnli").dir, "WNLI");
  for (const char* t : {"mrpc", "stsb", "wnli"}) EXPECT_TRUE(glue_task(t).pair) << t;
  EXPECT_TRUE(glue_task("stsb").regression);
  EXPECT_EQ(glue_task("stsb").num_labels, 1);
  EXPECT_TRUE(glue_task("stsb").label_words.empty());
  for (const char* t : {"sst2", "cola", "rte", "mrpc", "wnli"}) {
    EXPECT_FALSE(glue_task(t).regression) << t;
    EXPECT_EQ(glue_task(t).num_labels, 2) << t;
  }
  EXPECT_EQ(glue_task("mrpc").label_words, (std::vector<std::string>{"not_equivalent", "equivalent"}));
  EXPECT_EQ(glue_task("wnli").label_words, (std::vector<std::string>{"not_entailment", "entailment"}));
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
  // MRPC's and WNLI's words start apart; STS-B has none: T5 label words cannot regress.
  EXPECT_EQ(label_first_token_ids(glue_task("mrpc"), tok), (std::vector<int64_t>{'n' + 3, 'e' + 3}));
  EXPECT_EQ(label_first_token_ids(glue_task("wnli"), tok), (std::vector<int64_t>{'n' + 3, 'e' + 3}));
  for (int first_only = 0; first_only < 2; ++first_only) {
    try {
      if (first_only)
        label_first_token_ids(glue_task("stsb"), tok);
      else
        label_word_ids(glue_task("stsb"), tok);
      ADD_FAILURE() << "stsb has no label words, yet no UsageError";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "T5 label-word classification cannot do the regression task stsb"),
                std::string::npos)
          << e.what();
    }
  }
}

// With T5's own SentencePiece model, every classification task's label words start with different
// tokens (what the one-step T5 head needs); stsb, having none, is refused.
TEST(GlueTasks, T5LabelWordsOfEveryClassificationTask) {
  auto tok = model::load_tokenizer(source_dir() + "/data/tokenizers/t5-spiece.model");
  for (const auto& name : glue_task_names()) {
    const TaskInfo& task = glue_task(name);
    if (task.regression) {
      EXPECT_THROW(label_first_token_ids(task, *tok), UsageError) << name;
      continue;
    }
    const auto first = label_first_token_ids(task, *tok);
    ASSERT_EQ(first.size(), 2u) << name;
    EXPECT_NE(first[0], first[1]) << name;
    EXPECT_EQ(tok->decode(label_word_ids(task, *tok)[1]), task.label_words[1]) << name;
  }
}

// The GLUE-benchmark score of a task, from made-up metrics that tell the fields apart.
TEST(GlueTasks, HeadlineScorePerMetricKind) {
  dist::EvalMetrics m;
  m.count = 100;
  m.accuracy = 0.8;
  m.mcc = 0.5;
  m.f1 = 0.9;
  m.pearson = 0.6;
  m.spearman = 0.7;
  EXPECT_EQ(headline_score(glue_task("sst2"), m), 0.8);
  EXPECT_EQ(headline_score(glue_task("rte"), m), 0.8);
  EXPECT_EQ(headline_score(glue_task("wnli"), m), 0.8);
  EXPECT_EQ(headline_score(glue_task("cola"), m), 0.5);
  EXPECT_DOUBLE_EQ(headline_score(glue_task("mrpc"), m), (0.9 + 0.8) / 2);  // 0.85
  EXPECT_DOUBLE_EQ(headline_score(glue_task("stsb"), m), (0.6 + 0.7) / 2);  // 0.65
  // From real counts: TP 5, TN 3, FP 2, FN 1 -> accuracy 8/11, F1 10/13, MRPC score their mean.
  dist::Confusion c(2);
  const int counts[][3] = {{1, 1, 5}, {0, 0, 3}, {0, 1, 2}, {1, 0, 1}};  // label, prediction, times
  for (const auto& [label, pred, n] : counts)
    for (int i = 0; i < n; ++i) c.add(label, pred);
  const dist::EvalMetrics real = dist::compute_metrics(c);
  EXPECT_DOUBLE_EQ(headline_score(glue_task("mrpc"), real), (8.0 / 11.0 + 10.0 / 13.0) / 2);
}

// ---- errors ------------------------------------------------------------------------------------

class GlueErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("glue_errors_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    for (const char* d : {"SST-2", "CoLA", "RTE", "MRPC", "STS-B", "WNLI"})
      std::filesystem::create_directories(dir_ / d);
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

// MRPC, STS-B and WNLI: one malformed row of each kind, named by file and line.
TEST_F(GlueErrors, NewTasksNameFileAndLine) {
  const std::string bom = "\xEF\xBB\xBF";
  const std::string mrpc_header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n";
  write("MRPC/train.tsv", bom + mrpc_header + "1\t1\t2\ta \"\tb\n0\t3\t4\tonly a\n");
  std::string msg = error_of("mrpc", "train");
  EXPECT_NE(msg.find("MRPC/train.tsv:3: expected 5 tab-separated columns, found 4"), std::string::npos)
      << msg;
  write("MRPC/dev.tsv", bom + mrpc_header + "1\t1\t2\ta\tb\nyes\t3\t4\tc\td\n");
  msg = error_of("mrpc", "dev");
  EXPECT_NE(msg.find("MRPC/dev.tsv:3: label must be 0 or 1, got 'yes'"), std::string::npos) << msg;
  // The BOM is optional; a header that differs after it is not.
  write("MRPC/dev.tsv", mrpc_header + "1\t1\t2\t\" a\t\"b \" c\n");
  ASSERT_EQ(error_of("mrpc", "dev"), "");
  const auto ex = read_glue(dir_.string(), "mrpc", "dev");
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].text_a, "\" a");  // quotes are text: no CSV quoting
  EXPECT_EQ(ex[0].text_b, "\"b \" c");
  write("MRPC/dev.tsv", bom + "Quality\t#1 String\t#2 String\n1\ta\tb\n");
  msg = error_of("mrpc", "dev");
  EXPECT_NE(msg.find("MRPC/dev.tsv:1: expected the MRPC header"), std::string::npos) << msg;

  const std::string stsb_header =
      "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
  const auto stsb_row = [](const std::string& score) {
    return "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA man.\tA person.\t" + score + "\n";
  };
  const std::pair<const char*, const char*> bad_scores[] = {
      {"5.5", "STS-B score must be in [0, 5], got '5.5'"},
      {"-0.2", "STS-B score must be in [0, 5], got '-0.2'"},
      {"nan", "STS-B score must be in [0, 5], got 'nan'"},
      {"high", "STS-B score must be a number, got 'high'"},
      {"3.0x", "STS-B score must be a number, got '3.0x'"},
      {" 3", "STS-B score must be a number, got ' 3'"},
      {"", "STS-B score must be a number, got ''"},
  };
  for (const auto& [score, problem] : bad_scores) {
    write("STS-B/train.tsv", stsb_header + stsb_row("5.000") + stsb_row("1.4") + stsb_row(score));
    msg = error_of("stsb", "train");
    EXPECT_NE(msg.find(std::string("STS-B/train.tsv:4: ") + problem), std::string::npos)
        << score << ": " << msg;
  }
  write("STS-B/dev.tsv", stsb_header + stsb_row("3") + "0\tgenre\tA man.\tA person.\t2.5\n");
  msg = error_of("stsb", "dev");
  EXPECT_NE(msg.find("STS-B/dev.tsv:3: expected 10 tab-separated columns, found 5"), std::string::npos)
      << msg;
  write("STS-B/dev.tsv", stsb_header + stsb_row("5.000") + stsb_row("1.4") + stsb_row("3") +
                             stsb_row("0") + stsb_row("2.33333333333333"));
  const auto scores = read_glue(dir_.string(), "stsb", "dev");
  ASSERT_EQ(scores.size(), 5u);
  EXPECT_EQ(scores[0].score, 5.0);
  EXPECT_EQ(scores[1].score, 1.4);
  EXPECT_EQ(scores[2].score, 3.0);
  EXPECT_EQ(scores[3].score, 0.0);
  EXPECT_EQ(scores[4].score, 2.33333333333333);

  write("WNLI/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n1\tc\td\tentailment\n");
  msg = error_of("wnli", "train");
  EXPECT_NE(msg.find("WNLI/train.tsv:3: label must be 0 or 1, got 'entailment'"), std::string::npos)
      << msg;
  write("WNLI/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\textra\n");
  msg = error_of("wnli", "dev");
  EXPECT_NE(msg.find("WNLI/dev.tsv:2: expected 4 tab-separated columns, found 5"), std::string::npos)
      << msg;
  write("WNLI/dev.tsv", "sentence1\tsentence2\tlabel\n");
  msg = error_of("wnli", "dev");
  EXPECT_NE(msg.find("WNLI/dev.tsv:1: expected the WNLI header"), std::string::npos) << msg;
}

TEST_F(GlueErrors, UnknownTaskSplitAndMissingFile) {
  EXPECT_NE(error_of("mnli", "train").find(
                "unknown GLUE task 'mnli' (known: sst2, cola, rte, mrpc, stsb, wnli)"),
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
  // The T5 paper's prefixes for the other pair tasks follow the same pattern.
  for (const char* task : {"mrpc", "stsb", "wnli"}) {
    o.task = task;
    EXPECT_EQ(encode({"A b.", "C.", 1}, tok, o).ids,
              cat({bytes(std::string(task) + " sentence1: A b."), bytes("sentence2: C."), {2}}));
  }
  o.task.clear();
  EXPECT_THROW(encode({"x", "", 0}, tok, o), UsageError);
}

// STS-B end to end: encode_options_for marks it a regression task, the scores ride along, and collate
// hands them out as float32 labels (the classification tasks keep int64 class ids).
TEST(GlueEncode, StsbCollatesFloatScores) {
  model::ModelConfig bert;
  bert.arch = model::Arch::Bert;
  const EncodeOptions o = encode_options_for(bert, "stsb", 64);
  EXPECT_TRUE(o.regression);
  EXPECT_EQ(o.style, "bert");
  EXPECT_FALSE(encode_options_for(bert, "mrpc", 64).regression);
  EXPECT_FALSE(encode_options_for(bert, "rte", 64).regression);

  ByteTokenizer tok(/*bos as [CLS]=*/101);
  EXPECT_EQ(encode({"a", "b", 0, 3.8}, tok, o).score, 3.8);
  const auto dev = read_glue(glue_dir(), "stsb", "dev");
  const EncodedDataset data = encode_all(dev, tok, o);
  ASSERT_TRUE(data.regression);
  ASSERT_EQ(data.scores.size(), dev.size());
  ASSERT_EQ(data.size(), 1500);
  const std::vector<int64_t> rows = {0, 1, 1499, 7, 700};
  const model::Batch b = collate(data, rows);
  ASSERT_EQ(b.labels.scalar_type(), at::kFloat);
  ASSERT_EQ(b.labels.sizes(), (at::IntArrayRef{5}));
  for (size_t r = 0; r < rows.size(); ++r)
    EXPECT_EQ(b.labels[r].item<float>(), static_cast<float>(dev[rows[r]].score)) << rows[r];
  EXPECT_EQ(b.labels[0].item<float>(), 5.0f);
  EXPECT_EQ(b.labels[1].item<float>(), 4.75f);
  EXPECT_EQ(b.labels[2].item<float>(), 0.0f);
  EXPECT_TRUE(b.token_type_ids.defined());  // BERT pairs

  // The same examples without the regression flag collate as class ids, as before.
  EncodeOptions cls = o;
  cls.regression = false;
  const EncodedDataset as_classes = encode_all(dev, tok, cls);
  EXPECT_FALSE(as_classes.regression);
  EXPECT_TRUE(as_classes.scores.empty());
  EXPECT_EQ(collate(as_classes, rows).labels.scalar_type(), at::kLong);

  // Scores survive the thread split of encode_all (STS-B train: 5,749 rows, 2 chunks).
  const auto train = read_glue(glue_dir(), "stsb", "train");
  EncodeOptions threaded = o;
  threaded.num_threads = 3;
  const EncodedDataset t = encode_all(train, tok, threaded);
  ASSERT_EQ(t.scores.size(), train.size());
  for (size_t i = 0; i < train.size(); ++i) ASSERT_EQ(t.scores[i], static_cast<float>(train[i].score)) << i;
  threaded.num_threads = 1;
  EXPECT_EQ(encode_all(train, tok, threaded).scores, t.scores);
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
