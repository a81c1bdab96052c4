// launch/task_model.h — what train, eval and export share: a backbone set up for a GLUE task, and
// the dev-set evaluation gathered across ranks.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "dist/checkpoint.h"
#include "tasks/glue.h"
#include "dist/metrics.h"
#include "model/backbone.h"
#include "model/tokenizer.h"
#include "peft/method.h"
#include "sparse/methods.h"

namespace dt::launch {

struct TaskModel {
  std::unique_ptr<model::Backbone> backbone;
  std::unique_ptr<model::Tokenizer> tokenizer;
};

// Loads the backbone with the task's head (T5: the label words' first tokens) and the tokenizer.
TaskModel load_task_model(const std::string& model_arg, const std::string& tokenizer_path,
                          const tasks::TaskInfo& task);

struct Evaluation {
  dist::EvalMetrics metrics;
  double seconds = 0;
  at::Tensor logits;  // [dev size, num_labels] float32 on the host, every rank's rows: only with keep_logits
};

// The dev split of `task` under `data_dir`, its first `max_examples` (0: all), tokenized.
tasks::EncodedDataset load_dev_set(const std::string& data_dir, const tasks::TaskInfo& task,
                                  const model::Tokenizer& tokenizer, const tasks::EncodeOptions& encode,
                                  int64_t max_examples);

// Every rank evaluates its exact shard of `dev` (no padding, no double counting) through the
// methods' forward; the confusion counts are summed across ranks, so every rank gets the same result.
// keep_logits: every example's logits too, each rank's rows summed into one table (eval --predictions).
Evaluation evaluate(const peft::MethodSet& methods, model::Backbone& backbone, const tasks::EncodedDataset& dev,
                    int64_t num_labels, int64_t batch_size, comm::Communicator& comm, bool keep_logits = false);

// The metrics record of an evaluation at `step` (CLI.md keys: step, eval_accuracy, eval_count, and
// eval_mcc when the task's metric is Matthews correlation).
nlohmann::json eval_record(int64_t step, const Evaluation& e, const tasks::TaskInfo& task);

// The sparse methods' fixed indices (FISH masks, DSEE supports) as a checkpoint stores them, and a
// checkpoint's stored indices in the form sparse::restore_indices takes.
std::vector<dist::SparseIndex> checkpoint_indices(const peft::MethodSet& methods);
std::vector<sparse::EncodedIndices> stored_indices(const std::vector<dist::SparseIndex>& saved);

}  // namespace dt::launch
