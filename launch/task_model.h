// launch/task_model.h — what train, eval and export share: a backbone set up for a GLUE task, and
// the dev-set evaluation gathered across ranks.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "launch/cli.h"
#include "launch/session.h"
#include "dist/checkpoint.h"
#include "tasks/glue.h"
#include "tasks/multitask.h"
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

// Loads the backbone with the tasks' heads (one task: its head; several: theirs stacked, see
// tasks/multitask.h; T5: the label words' first tokens) and the tokenizer.
TaskModel load_task_model(const std::string& model_arg, const std::string& tokenizer_path,
                          const tasks::TaskList& task_list);

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
// methods' forward, on task `task` of `task_list` (its head columns); classification sums the
// confusion counts across ranks, regression sums each rank's predictions into one table and every rank
// computes Pearson and Spearman from it: every rank gets the same result.
// keep_logits: every example's logits too, each rank's rows summed into one table (eval --predictions).
Evaluation evaluate(const peft::MethodSet& methods, model::Backbone& backbone, const tasks::EncodedDataset& dev,
                    const tasks::TaskList& task_list, int64_t task, int64_t batch_size, comm::Communicator& comm,
                    bool keep_logits = false);

// The metrics record of one task's evaluation at `step` (CLI.md keys: step, eval_count, eval_accuracy,
// and eval_mcc for CoLA, eval_f1 for MRPC, eval_pearson + eval_spearman (no accuracy) for STS-B).
nlohmann::json eval_record(int64_t step, const Evaluation& e, const tasks::TaskInfo& task);
// A multi-task run's record: eval/<task>/<metric> for every task (the same metrics as above, and
// eval/<task>/count), and eval_average, the mean of the tasks' GLUE scores (tasks::headline_score).
nlohmann::json multitask_eval_record(int64_t step, const std::vector<Evaluation>& evaluations,
                                     const tasks::TaskList& task_list);
// "accuracy 0.9163" / "accuracy 0.7, mcc 0.25" / "pearson 0.85, spearman 0.84": the log's words.
std::string metrics_text(const Evaluation& e, const tasks::TaskInfo& task);

// The session of a run that trains (train, search): --dist.backend, --log-all-ranks, --threads, --device.
SessionOptions session_options(const po::variables_map& vm);

// The backbone with the task's head, its frozen weights moved to this rank's device once (mapped from the
// file, then copied) and cast to --train.dtype bf16 if asked: the Fisher pass and the methods' set-up then
// run where they will train. The seed first: every rank draws the same initial trainable values.
TaskModel load_model(const po::variables_map& vm, const tasks::TaskList& task_list, const c10::Device& device,
                     uint64_t seed);

// Every frozen byte hashed (what identifies a named config's random init, and what older checkpoints
// recorded): reads the whole backbone, seconds per GB.
std::string frozen_hash(const model::Backbone& backbone);

// The frozen backbone's identity for the start-up agreement, checkpoints and S3Delta structure files,
// without reading every frozen byte on every rank (T5-3B's 5.7 GB took ~30 s per start-up).
struct FrozenIdentity {
  std::string weights_sha256;  // of the weights file --model names (dist::sha256_file_cached); "" for a named config
  std::string tensors_hash;    // frozen_hash: only without a weights file (a named config's seeded random init)
  std::string agreed;          // the start-up item: config name, the two above, and a fingerprint of the frozen
                               // tensors as loaded (names, shapes, dtypes, 1,024 values each: the cast and
                               // placement, not the file, which the sha256 covers)
};
// Collective over `comm`: the lowest rank of each host hashes the file first (or finds it cached), the
// host's other ranks then find it cached, so a node reads the file once even on its first run.
FrozenIdentity identify_frozen(const std::string& model_arg, const model::Backbone& backbone,
                               comm::Communicator& comm);

// What methods that learn from data see (FISH's Fisher samples): the tasks' training examples in one
// order drawn from `seed` over all of them (each task's share is its size's; one task: a permutation of
// its split), each id its task's row with that task's head columns. A batch of ids spanning two tasks
// is a UsageError (per-sample passes never ask for one). `train` must outlive the result.
peft::TrainingData training_samples(const std::vector<tasks::EncodedDataset>& train, const tasks::TaskList& task_list,
                                    uint64_t seed);

// The sparse methods' fixed indices (FISH masks, DSEE supports) as a checkpoint stores them, and a
// checkpoint's stored indices in the form sparse::restore_indices takes.
std::vector<dist::SparseIndex> checkpoint_indices(const peft::MethodSet& methods);
std::vector<sparse::EncodedIndices> stored_indices(const std::vector<dist::SparseIndex>& saved);

}  // namespace dt::launch
