// launch/task_model.h — what train, eval and export share: a backbone set up for a GLUE task, and
// the dev-set evaluation gathered across ranks.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "dist/glue.h"
#include "dist/metrics.h"
#include "model/backbone.h"
#include "model/tokenizer.h"
#include "peft/method.h"

namespace dt::launch {

struct TaskModel {
  std::unique_ptr<model::Backbone> backbone;
  std::unique_ptr<model::Tokenizer> tokenizer;
};

// Loads the backbone with the task's head (T5: the label words' first tokens) and the tokenizer.
TaskModel load_task_model(const std::string& model_arg, const std::string& tokenizer_path,
                          const dist::TaskInfo& task);

struct Evaluation {
  dist::EvalMetrics metrics;
  double seconds = 0;
};

// Every rank evaluates its exact shard of `dev` (no padding, no double counting) through the
// methods' forward; the confusion counts are summed across ranks, so every rank gets the same result.
Evaluation evaluate(const peft::MethodSet& methods, model::Backbone& backbone, const dist::EncodedDataset& dev,
                    int64_t num_labels, int64_t batch_size, comm::Communicator& comm);

}  // namespace dt::launch
