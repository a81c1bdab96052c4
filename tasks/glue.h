// tasks/glue.h — the bundled GLUE tasks (SST-2, CoLA, RTE, MRPC, STS-B, WNLI): reading the TSVs,
// tokenizing, collating, and each task's GLUE-benchmark score.
//
// Design note: a split is read and tokenized once, up front, into one flat id buffer with offsets
// (EncodedDataset); a training step then only gathers rows by index and pads them (collate), so the
// sampler and the step loop never see text. Files are the GLUE files as distributed (see
// data/PROVENANCE.md): SST-2 `sentence\tlabel` with a header; CoLA four columns and no header (its dev
// file lacks a final newline); RTE `index\tsentence1\tsentence2\tlabel` with string labels; MRPC
// `Quality\t#1 ID\t#2 ID\t#1 String\t#2 String` behind a UTF-8 BOM (GLUE's script copies it from the
// source; a BOM at the start of any file is dropped); STS-B ten columns, sentences in 7 and 8, a float
// score in [0, 5] in 9 written as "5.000", "1.4" or "3"; WNLI as RTE with 0/1 labels. Rows are split on
// tabs only, with no quote handling: MRPC and others hold unbalanced `"` inside fields, which a CSV
// reader would run across lines. Any row that does not fit is a dt::UsageError naming the file and the
// 1-based line.
//
// STS-B is a regression task (TaskInfo::regression): its examples carry a score instead of a class,
// collate hands it to the model as float32 labels (the backbone's one-output head, MSE loss), and T5's
// label-word classification refuses it. Its headline score is the mean of Pearson and Spearman
// correlation, MRPC's the mean of F1 and accuracy, CoLA's MCC, the others' accuracy (headline_score,
// as the GLUE leaderboard averages them).
//
// Three input layouts, one per backbone family (EncodeOptions::style):
//   decoder  [BOS] a [EOS b] [EOS]     llama-style; BOS/EOS per add_bos/add_eos; pairs are joined by EOS
//   bert     [CLS] a [SEP] (b [SEP])   CLS = tokenizer bos_id(), SEP = eos_id() (WordPiece)
//   t5       "<task> sentence: a" EOS, "rte sentence1: a sentence2: b" EOS   (T5 paper's GLUE prefixes;
//            every pair task, mrpc, stsb and wnli included, uses sentence1/sentence2 there)
// Truncation keeps the special tokens and removes text tokens from the end, longest-first for pairs
// (one token at a time from the longer side, as Hugging Face's `longest_first`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dist/metrics.h"
#include "model/backbone.h"
#include "model/config.h"
#include "model/tokenizer.h"

namespace dt::tasks {

struct Example {
  std::string text_a;
  std::string text_b;  // empty for single-sentence tasks
  int64_t label = 0;
  double score = 0;  // regression target (STS-B: [0, 5]); `label` is unused then
};

// F1: MRPC's accuracy and F1 of class 1; Correlation: STS-B's Pearson and Spearman.
enum class MetricKind { Accuracy, Mcc, F1, Correlation };

struct TaskInfo {
  std::string name;                     // sst2 | cola | rte | mrpc | stsb | wnli (the --task value)
  std::string dir;                      // folder under the GLUE data dir: SST-2, CoLA, RTE, MRPC, ...
  int64_t num_labels = 2;               // 1 for a regression task (one output)
  bool pair = false;                    // two sentences per example
  std::vector<std::string> label_words; // T5 targets, indexed by label id (none for regression)
  MetricKind metric = MetricKind::Accuracy;  // the task's headline metric (accuracy is always reported)
  bool regression = false;              // examples carry Example::score, not a class
};

// Throws dt::UsageError naming the known tasks.
const TaskInfo& glue_task(const std::string& task);
std::vector<std::string> glue_task_names();

// Reads <data_dir>/<TaskDir>/<split>.tsv; `data_dir` may also be the task folder itself.
// split: train | dev. Labels: SST-2 0 negative / 1 positive; CoLA 0 unacceptable / 1 acceptable;
// RTE 0 entailment / 1 not_entailment (T5's and HF datasets' order); MRPC 0 not equivalent /
// 1 equivalent; WNLI 0 not_entailment / 1 entailment (as GLUE's files); STS-B a score in [0, 5] in
// Example::score. Trailing whitespace of the text is dropped (SST-2 sentences end with a space;
// tokenizers disagree on what to make of it).
std::vector<Example> read_glue(const std::string& data_dir, const std::string& task,
                               const std::string& split);

struct EncodeOptions {
  int64_t max_len = 128;         // tokens per example, special tokens included
  bool add_bos = true;           // decoder style only (bert and t5 fix their own specials)
  bool add_eos = false;          // decoder style only
  std::string style = "decoder";  // decoder | bert | t5
  std::string task;              // t5 style: picks the text prefix ("sst2 sentence: ...")
  bool regression = false;       // encode_all keeps each example's score (EncodedDataset::scores)
  // encode_all's threads (0: std::thread::hardware_concurrency()); the tokenizer's encode() is const
  // and called concurrently. Under mpirun, hardware threads / ranks per node is a fair share.
  int num_threads = 0;
};

struct EncodedExample {
  std::vector<int64_t> ids;
  int64_t label = 0;
  double score = 0;  // Example::score, copied
  // BERT-style pairs: where segment B (token type 1: text_b and its [SEP]) begins; 0 for one segment.
  int64_t segment_b = 0;
};

// One example. Throws dt::UsageError for an unknown style, a tokenizer lacking the special token a
// style needs, or a max_len too small to hold the special tokens.
// The layout each architecture reads: decoders BOS + text (Llama), BERT [CLS] a [SEP] b [SEP], T5 the
// task-prefixed text + EOS. train and mask must tokenize identically, so both take it from here.
// Sets `regression` for a regression task (stsb).
EncodeOptions encode_options_for(const model::ModelConfig& config, const std::string& task, int64_t max_len);

EncodedExample encode(const Example& example, const model::Tokenizer& tokenizer,
                      const EncodeOptions& options);

// A whole split, tokenized: example i is ids[offsets[i] .. offsets[i+1]).
struct EncodedDataset {
  std::vector<int64_t> ids;
  std::vector<int64_t> offsets{0};
  std::vector<int64_t> labels;     // per example (0 for every example of a regression task)
  std::vector<int64_t> segment_b;  // per example (EncodedExample::segment_b)
  int64_t pad_id = 0;
  bool regression = false;         // EncodeOptions::regression
  std::vector<float> scores;       // per example, only when regression (the targets collate hands out)

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t length(int64_t i) const { return offsets[i + 1] - offsets[i]; }
  int64_t max_length() const;
  int64_t num_tokens() const { return static_cast<int64_t>(ids.size()); }
};

// Tokenizes every example, in contiguous chunks on options.num_threads threads; the result does not
// depend on the thread count.
EncodedDataset encode_all(const std::vector<Example>& examples, const model::Tokenizer& tokenizer,
                          const EncodeOptions& options);

// Rows `indices` of `data` as a batch: input_ids and attention_mask [B, T] (right-padded with
// data.pad_id to the longest row of this batch, or to `pad_to` tokens if that is longer), labels [B]
// int64 class ids, or for a regression dataset float32 scores. CPU tensors.
model::Batch collate(const EncodedDataset& data, const std::vector<int64_t>& indices, int64_t pad_to = 0);

// The token ids of each label word followed by EOS (T5 decoder targets), indexed by label id.
// Both throw dt::UsageError for a task without label words (the regression task stsb).
std::vector<std::vector<int64_t>> label_word_ids(const TaskInfo& task,
                                                 const model::Tokenizer& tokenizer);
// The first token of each label word (what T5Backbone::set_label_token_ids takes); throws dt::Error
// if two label words start with the same token, since they could not be told apart in one step.
std::vector<int64_t> label_first_token_ids(const TaskInfo& task, const model::Tokenizer& tokenizer);

// The task's GLUE-benchmark score, a fraction: accuracy; CoLA MCC; MRPC (F1 + accuracy) / 2; STS-B
// (Pearson + Spearman) / 2 — what the GLUE leaderboard averages for a task with two metrics.
double headline_score(const TaskInfo& task, const dist::EvalMetrics& m);

}  // namespace dt::tasks
