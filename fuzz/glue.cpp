// fuzz/glue.cpp — the GLUE TSV reader (--data): SST-2 (header, two columns), CoLA (four columns, no
// header), RTE (pairs, string labels). The first byte picks the task, the rest is its train.tsv; rows
// that parse are then tokenized with the bundled WordPiece vocabulary, BERT style, and collated.
#include <filesystem>
#include <vector>

#include "tasks/glue.h"
#include "fuzz/fuzz_util.h"
#include "model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const auto tokenizer =
      dt::model::load_tokenizer(DELTATUNE_SOURCE_DIR "/data/tokenizers/bert-base-uncased-vocab.txt");
  static const std::string root = dt::fuzz::scratch_path("glue");
  const std::vector<std::string> tasks = dt::tasks::glue_task_names();
  const dt::tasks::TaskInfo& task = dt::tasks::glue_task(tasks[data[0] % tasks.size()]);
  const std::string dir = root + "/" + task.dir;
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/train.tsv";
  dt::fuzz::write_file(path, data + 1, size - 1);
  std::vector<dt::tasks::Example> examples;
  dt::fuzz::expect_clean_error(path, [&] { examples = dt::tasks::read_glue(root, task.name, "train"); });
  for (const auto& e : examples) {
    if (e.label < 0 || e.label >= task.num_labels) {
      std::fprintf(stderr, "fuzz: label %lld outside the task's %lld\n", static_cast<long long>(e.label),
                   static_cast<long long>(task.num_labels));
      std::abort();
    }
  }
  if (examples.empty()) return 0;
  dt::fuzz::expect_clean_error("", [&] {
    dt::tasks::EncodeOptions options;
    options.style = "bert";
    options.max_len = 16;
    options.num_threads = 1;
    const auto encoded = dt::tasks::encode_all(examples, *tokenizer, options);
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < std::min<int64_t>(encoded.size(), 4); ++i) rows.push_back(i);
    (void)dt::tasks::collate(encoded, rows);
  });
  return 0;
}
