// tasks/glue.cpp — see glue.h.
#include "tasks/glue.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <charconv>
#include <exception>
#include <fstream>
#include <sstream>
#include <string_view>
#include <thread>

#include "util/error.h"

namespace dt::tasks {

// ---- tasks -------------------------------------------------------------------------------------

namespace {

const std::vector<TaskInfo>& tasks() {
  static const std::vector<TaskInfo> all = {
      {"sst2", "SST-2", 2, false, {"negative", "positive"}, MetricKind::Accuracy},
      {"cola", "CoLA", 2, false, {"unacceptable", "acceptable"}, MetricKind::Mcc},
      {"rte", "RTE", 2, true, {"entailment", "not_entailment"}, MetricKind::Accuracy},
      {"mrpc", "MRPC", 2, true, {"not_equivalent", "equivalent"}, MetricKind::F1},
      {"stsb", "STS-B", 1, true, {}, MetricKind::Correlation, true},
      {"wnli", "WNLI", 2, true, {"not_entailment", "entailment"}, MetricKind::Accuracy},
  };
  return all;
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

}  // namespace

std::vector<std::string> glue_task_names() {
  std::vector<std::string> names;
  for (const auto& t : tasks()) names.push_back(t.name);
  return names;
}

const TaskInfo& glue_task(const std::string& task) {
  for (const auto& t : tasks())
    if (t.name == task) return t;
  throw_usage_error("unknown GLUE task '" + task + "' (known: " + join(glue_task_names(), ", ") + ")");
}

// ---- reading -----------------------------------------------------------------------------------

namespace {

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_usage_error("cannot open GLUE file " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Splits the file into lines (LF, an optional CR before it dropped); a missing final newline and
// blank lines at the end are fine, a blank line inside is a malformed row. A UTF-8 byte order mark at
// the start of the file is dropped (MRPC's files have one before the header).
std::vector<std::string_view> split_lines(const std::string& text) {
  std::vector<std::string_view> lines;
  size_t start = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = end + 1;
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();  // blank lines at the very end
  return lines;
}

std::vector<std::string_view> split_tabs(std::string_view line) {
  std::vector<std::string_view> cols;
  size_t start = 0;
  while (true) {
    size_t end = line.find('\t', start);
    if (end == std::string_view::npos) {
      cols.push_back(line.substr(start));
      return cols;
    }
    cols.push_back(line.substr(start, end - start));
    start = end + 1;
  }
}

std::string trim_right(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

// Where a row went wrong: "<file>:<line>: <problem>".
[[noreturn]] void bad_row(const std::string& path, size_t line_no, const std::string& problem) {
  throw_usage_error(path + ":" + std::to_string(line_no) + ": " + problem);
}

int64_t parse_label(std::string_view s, const TaskInfo& task, const std::string& path,
                    size_t line_no) {
  if (task.name == "rte") {
    if (s == "entailment") return 0;
    if (s == "not_entailment") return 1;
    bad_row(path, line_no, "RTE label must be entailment or not_entailment, got '" +
                               std::string(s) + "'");
  }
  if (s == "0") return 0;
  if (s == "1") return 1;
  bad_row(path, line_no, "label must be 0 or 1, got '" + std::string(s) + "'");
}

// STS-B's similarity score: a whole decimal number ("5.000", "1.4", "3", as the file mixes them) in
// [0, 5]. std::from_chars ignores the locale and takes no leading space or '+'.
double parse_score(std::string_view s, const std::string& path, size_t line_no) {
  double v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size())
    bad_row(path, line_no, "STS-B score must be a number, got '" + std::string(s) + "'");
  if (!(v >= 0.0 && v <= 5.0))  // NaN fails too
    bad_row(path, line_no, "STS-B score must be in [0, 5], got '" + std::string(s) + "'");
  return v;
}

// The header a task's file must start with (empty: none), after any BOM.
std::string expected_header(const TaskInfo& task) {
  if (task.name == "sst2") return "sentence\tlabel";
  if (task.name == "rte" || task.name == "wnli") return "index\tsentence1\tsentence2\tlabel";
  if (task.name == "mrpc") return "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String";
  if (task.name == "stsb")
    return "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore";
  return {};
}

// Tab-separated columns per row.
size_t column_count(const TaskInfo& task) {
  if (task.name == "sst2") return 2;
  if (task.name == "mrpc") return 5;
  if (task.name == "stsb") return 10;
  return 4;  // cola, rte, wnli
}

}  // namespace

std::vector<Example> read_glue(const std::string& data_dir, const std::string& task_name,
                               const std::string& split) {
  const TaskInfo& task = glue_task(task_name);
  if (split != "train" && split != "dev")
    throw_usage_error("unknown GLUE split '" + split + "' (known: train, dev)");
  std::string path = data_dir + "/" + task.dir + "/" + split + ".tsv";
  if (!file_exists(path)) {
    std::string direct = data_dir + "/" + split + ".tsv";  // data_dir is the task's own folder
    if (!file_exists(direct))
      throw_usage_error("GLUE file not found: " + path + " (give --data the folder that holds " +
                        task.dir + "/)");
    path = direct;
  }
  const std::string text = read_file(path);
  const std::vector<std::string_view> lines = split_lines(text);

  size_t first = 0;
  const std::string header = expected_header(task);
  if (!header.empty()) {
    if (lines.empty() || lines[0] != header)
      bad_row(path, 1, "expected the " + task.dir + " header '" + header + "' (tab-separated)");
    first = 1;
  }
  const size_t ncols = column_count(task);
  std::vector<Example> out;
  out.reserve(lines.size());
  for (size_t i = first; i < lines.size(); ++i) {
    const size_t line_no = i + 1;
    const std::vector<std::string_view> cols = split_tabs(lines[i]);
    if (cols.size() != ncols)
      bad_row(path, line_no, "expected " + std::to_string(ncols) + " tab-separated columns, found " +
                                 std::to_string(cols.size()));
    Example ex;
    if (task.name == "sst2") {
      ex.text_a = trim_right(cols[0]);
      ex.label = parse_label(cols[1], task, path, line_no);
    } else if (task.name == "cola") {  // source, label, original mark, sentence
      ex.text_a = trim_right(cols[3]);
      ex.label = parse_label(cols[1], task, path, line_no);
    } else if (task.name == "mrpc") {  // quality (label), #1 id, #2 id, #1 string, #2 string
      ex.text_a = trim_right(cols[3]);
      ex.text_b = trim_right(cols[4]);
      ex.label = parse_label(cols[0], task, path, line_no);
    } else if (task.name == "stsb") {  // index, genre, filename, year, old_index, source1, source2,
      ex.text_a = trim_right(cols[7]);  // sentence1, sentence2, score
      ex.text_b = trim_right(cols[8]);
      ex.score = parse_score(cols[9], path, line_no);
    } else {  // rte, wnli: index, sentence1, sentence2, label
      ex.text_a = trim_right(cols[1]);
      ex.text_b = trim_right(cols[2]);
      ex.label = parse_label(cols[3], task, path, line_no);
    }
    if (ex.text_a.empty() || (task.pair && ex.text_b.empty()))
      bad_row(path, line_no, "empty sentence");
    out.push_back(std::move(ex));
  }
  if (out.empty()) throw_usage_error(path + ": no examples");
  return out;
}

// ---- tokenizing --------------------------------------------------------------------------------

namespace {

// Drops tokens from the end of the longer of a / b, one at a time, until both fit in `budget`.
void truncate_pair(std::vector<int64_t>& a, std::vector<int64_t>& b, int64_t budget) {
  size_t na = a.size(), nb = b.size();
  while (static_cast<int64_t>(na + nb) > budget) {
    if (na > nb)
      --na;
    else
      --nb;
  }
  a.resize(na);
  b.resize(nb);
}

int64_t required_special(bool want, int64_t id, const char* what, const std::string& style) {
  if (want && id < 0)
    throw_usage_error("the tokenizer has no " + std::string(what) + " token, which style '" + style +
                      "' needs");
  return id;
}

std::string t5_prefix(const std::string& task, const char* field) {
  return task + " " + field + ": ";
}

}  // namespace

EncodeOptions encode_options_for(const model::ModelConfig& config, const std::string& task, int64_t max_len) {
  EncodeOptions o;
  o.max_len = max_len;
  o.task = task;
  for (const TaskInfo& t : tasks())  // not glue_task: a name it does not know keeps working as before
    if (t.name == task) o.regression = t.regression;
  switch (config.arch) {
    case model::Arch::Llama: o.style = "decoder"; o.add_bos = true; break;
    case model::Arch::Bert: o.style = "bert"; break;
    case model::Arch::T5: o.style = "t5"; break;
  }
  return o;
}

EncodedExample encode(const Example& example, const model::Tokenizer& tokenizer,
                      const EncodeOptions& options) {
  const bool pair = !example.text_b.empty();
  const std::string& style = options.style;
  std::vector<int64_t> a, b;
  std::vector<int64_t> head, middle, tail;  // special tokens around a and b
  if (style == "decoder") {
    const int64_t bos = required_special(options.add_bos, tokenizer.bos_id(), "BOS", style);
    const int64_t eos = required_special(options.add_eos || pair, tokenizer.eos_id(),
                                         "EOS", style);
    if (options.add_bos) head.push_back(bos);
    if (pair) middle.push_back(eos);
    if (options.add_eos) tail.push_back(eos);
    a = tokenizer.encode(example.text_a);
    if (pair) b = tokenizer.encode(example.text_b);
  } else if (style == "bert") {
    const int64_t cls = required_special(true, tokenizer.bos_id(), "[CLS] (BOS)", style);
    const int64_t sep = required_special(true, tokenizer.eos_id(), "[SEP] (EOS)", style);
    head.push_back(cls);
    if (pair) middle.push_back(sep);
    tail.push_back(sep);
    a = tokenizer.encode(example.text_a);
    if (pair) b = tokenizer.encode(example.text_b);
  } else if (style == "t5") {
    if (options.task.empty()) throw_usage_error("encode style 't5' needs EncodeOptions::task");
    const int64_t eos = required_special(true, tokenizer.eos_id(), "EOS", style);
    tail.push_back(eos);
    // Encoding the two halves apart gives the pieces of the joined text: SentencePiece never joins
    // pieces across whitespace, so only the truncation point differs.
    if (pair) {
      a = tokenizer.encode(t5_prefix(options.task, "sentence1") + example.text_a);
      b = tokenizer.encode("sentence2: " + example.text_b);
    } else {
      a = tokenizer.encode(t5_prefix(options.task, "sentence") + example.text_a);
    }
  } else {
    throw_usage_error("unknown encode style '" + style + "' (known: decoder, bert, t5)");
  }
  const int64_t specials = static_cast<int64_t>(head.size() + middle.size() + tail.size());
  if (options.max_len <= specials)
    throw_usage_error("max_len " + std::to_string(options.max_len) +
                      " leaves no room for text after the " + std::to_string(specials) +
                      " special tokens of style '" + style + "'");
  truncate_pair(a, b, options.max_len - specials);

  EncodedExample out;
  out.label = example.label;
  out.score = example.score;
  out.ids.reserve(specials + a.size() + b.size());
  out.ids.insert(out.ids.end(), head.begin(), head.end());
  out.ids.insert(out.ids.end(), a.begin(), a.end());
  if (pair) {
    out.ids.insert(out.ids.end(), middle.begin(), middle.end());
    // BERT's segment B starts after the [SEP] that closes A (HF: token_type_ids 1 for B and its [SEP]).
    if (style == "bert") out.segment_b = static_cast<int64_t>(out.ids.size());
    out.ids.insert(out.ids.end(), b.begin(), b.end());
  }
  out.ids.insert(out.ids.end(), tail.begin(), tail.end());
  return out;
}

int64_t EncodedDataset::max_length() const {
  int64_t m = 0;
  for (int64_t i = 0; i < size(); ++i) m = std::max(m, length(i));
  return m;
}

namespace {

void encode_range(const std::vector<Example>& examples, size_t begin, size_t end,
                  const model::Tokenizer& tokenizer, const EncodeOptions& options,
                  EncodedDataset& out) {
  out.labels.reserve(end - begin);
  out.offsets.reserve(end - begin + 1);
  if (options.regression) out.scores.reserve(end - begin);
  for (size_t i = begin; i < end; ++i) {
    EncodedExample e = encode(examples[i], tokenizer, options);
    out.ids.insert(out.ids.end(), e.ids.begin(), e.ids.end());
    out.offsets.push_back(static_cast<int64_t>(out.ids.size()));
    out.labels.push_back(e.label);
    out.segment_b.push_back(e.segment_b);
    if (options.regression) out.scores.push_back(static_cast<float>(e.score));
  }
}

}  // namespace

EncodedDataset encode_all(const std::vector<Example>& examples, const model::Tokenizer& tokenizer,
                          const EncodeOptions& options) {
  const int64_t pad_id = tokenizer.pad_id();
  DT_CHECK(pad_id >= 0, "the tokenizer has no padding id");
  const size_t n = examples.size();
  size_t threads = options.num_threads > 0 ? static_cast<size_t>(options.num_threads)
                                           : std::max(1u, std::thread::hardware_concurrency());
  threads = std::max<size_t>(1, std::min(threads, n / 2048));  // small splits: not worth a thread
  std::vector<EncodedDataset> parts(threads);
  std::vector<std::exception_ptr> errors(threads);
  auto run = [&](size_t t) {
    try {
      encode_range(examples, n * t / threads, n * (t + 1) / threads, tokenizer, options, parts[t]);
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(run, t);
  run(0);
  for (auto& th : pool) th.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);  // the first chunk's error: the earliest bad example

  EncodedDataset data = std::move(parts[0]);
  data.pad_id = pad_id;
  data.regression = options.regression;
  for (size_t t = 1; t < threads; ++t) {
    const int64_t shift = static_cast<int64_t>(data.ids.size());
    data.ids.insert(data.ids.end(), parts[t].ids.begin(), parts[t].ids.end());
    for (size_t i = 1; i < parts[t].offsets.size(); ++i)
      data.offsets.push_back(parts[t].offsets[i] + shift);
    data.labels.insert(data.labels.end(), parts[t].labels.begin(), parts[t].labels.end());
    data.segment_b.insert(data.segment_b.end(), parts[t].segment_b.begin(), parts[t].segment_b.end());
    data.scores.insert(data.scores.end(), parts[t].scores.begin(), parts[t].scores.end());
  }
  return data;
}

model::Batch collate(const EncodedDataset& data, const std::vector<int64_t>& indices, int64_t pad_to) {
  DT_CHECK(!indices.empty(), "collate: empty batch");
  DT_CHECK(!data.regression || data.scores.size() == data.labels.size(),
           "collate: a regression dataset of " + std::to_string(data.size()) + " examples holds " +
               std::to_string(data.scores.size()) + " scores");
  int64_t longest = std::max<int64_t>(0, pad_to);
  for (int64_t i : indices) {
    DT_CHECK(i >= 0 && i < data.size(), "collate: index " + std::to_string(i) +
                                            " outside a dataset of " + std::to_string(data.size()));
    longest = std::max(longest, data.length(i));
  }
  const int64_t B = static_cast<int64_t>(indices.size());
  model::Batch batch;
  batch.input_ids = at::empty({B, longest}, at::kLong);
  batch.attention_mask = at::empty({B, longest}, at::kLong);
  batch.labels = at::empty({B}, data.regression ? at::kFloat : at::kLong);
  int64_t* ids = batch.input_ids.data_ptr<int64_t>();
  int64_t* mask = batch.attention_mask.data_ptr<int64_t>();
  int64_t* labels = data.regression ? nullptr : batch.labels.data_ptr<int64_t>();
  float* scores = data.regression ? batch.labels.data_ptr<float>() : nullptr;
  for (int64_t r = 0; r < B; ++r) {
    const int64_t i = indices[r], n = data.length(i);
    std::copy_n(data.ids.data() + data.offsets[i], n, ids + r * longest);
    std::fill(ids + r * longest + n, ids + (r + 1) * longest, data.pad_id);
    std::fill(mask + r * longest, mask + r * longest + n, int64_t{1});
    std::fill(mask + r * longest + n, mask + (r + 1) * longest, int64_t{0});
    if (data.regression)
      scores[r] = data.scores[i];
    else
      labels[r] = data.labels[i];
  }
  bool pairs = false;
  for (int64_t i : indices) pairs |= i < static_cast<int64_t>(data.segment_b.size()) && data.segment_b[i] > 0;
  if (pairs) {
    batch.token_type_ids = at::zeros({B, longest}, at::kLong);
    int64_t* types = batch.token_type_ids.data_ptr<int64_t>();
    for (int64_t r = 0; r < B; ++r) {
      const int64_t i = indices[r], begin = data.segment_b[i];
      if (begin > 0) std::fill(types + r * longest + begin, types + r * longest + data.length(i), int64_t{1});
    }
  }
  return batch;
}

std::vector<std::vector<int64_t>> label_word_ids(const TaskInfo& task,
                                                 const model::Tokenizer& tokenizer) {
  if (task.label_words.empty())
    throw_usage_error(task.regression
                          ? "T5 label-word classification cannot do the regression task " + task.name +
                                " (it has no label words)"
                          : "task " + task.name + " has no label words for T5 label-word classification");
  DT_CHECK(tokenizer.eos_id() >= 0, "label_word_ids: the tokenizer has no EOS");
  std::vector<std::vector<int64_t>> out;
  for (const std::string& word : task.label_words) {
    std::vector<int64_t> ids = tokenizer.encode(word);
    ids.push_back(tokenizer.eos_id());
    out.push_back(std::move(ids));
  }
  return out;
}

std::vector<int64_t> label_first_token_ids(const TaskInfo& task, const model::Tokenizer& tokenizer) {
  std::vector<int64_t> first;
  for (const auto& ids : label_word_ids(task, tokenizer)) {
    DT_CHECK(ids.size() > 1, "label word of task " + task.name + " encodes to no token");
    for (size_t c = 0; c < first.size(); ++c)
      DT_CHECK(first[c] != ids[0], "label words '" + task.label_words[c] + "' and '" +
                                       task.label_words[first.size()] +
                                       "' start with the same token " + std::to_string(ids[0]));
    first.push_back(ids[0]);
  }
  return first;
}

double headline_score(const TaskInfo& task, const dist::EvalMetrics& m) {
  switch (task.metric) {
    case MetricKind::Accuracy: return m.accuracy;
    case MetricKind::Mcc: return m.mcc;
    case MetricKind::F1: return (m.f1 + m.accuracy) / 2.0;
    case MetricKind::Correlation: return (m.pearson + m.spearman) / 2.0;
  }
  DT_FAIL("task " + task.name + ": unknown metric kind");
}

}  // namespace dt::tasks
