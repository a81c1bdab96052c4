// tasks/multitask.h — a run's tasks (`--task sst2,cola,rte`): their heads stacked into one, and the
// multi-task sampler that says which task each batch comes from and which of its rows.
//
// Design note. Heads: every task keeps its own classifier rows, stacked into the backbone's one head
// ("classifier.weight" [sum of num_labels, d]; T5: every task's label words, in --task order); a
// batch carries its task's columns (model::Batch::head_offset/head_size) and the backbone scores and
// trains only those. A row of another task gets no gradient, so this is a head per task under one
// name: checkpoints, exports and `plan` count it as the task head HF PEFT's modules_to_save would be.
// (AdamW keeps moving a row by its momentum in steps without its task, as PyTorch does for tensors
// whose .grad is zeros rather than None; with one task per batch and no weight decay the difference
// from separate heads is that momentum.)
//
// Mixing (T5 paper §3.5.2; Hyperformer's sampler): one task per batch, task t with probability
//   proportional  min(n_t, cap) / Σ min(n_s, cap)        (cap 0: no cap; examples-proportional)
//   temperature   n_t^(1/T) / Σ n_s^(1/T)                 (T = 1 is proportional, T → ∞ uniform)
// over the tasks' training-set sizes n_t. `--multitask.batch mixed` draws the task of every row of the
// batch instead (the same rates; T5's "examples-proportional mixture" inside one batch): the batch is
// then parts of several tasks, each part scored by its own head, the loss their row-weighted mean, one
// backward. The task of global batch b (mixed: of its row j) is a pure function of (seed, b[, j]),
// drawn from its own std::mt19937_64 (the engine's output is fixed by the standard), so every rank
// picks the same task with no communication, and a resumed run continues bit for bit: the state is
// the number of batches drawn plus each task's DistributedSampler state (its own epoch order; rank r
// takes its shard of it as in single-task runs). With one task the sampler is exactly the
// single-task DistributedSampler.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dist/sampler.h"
#include "model/backbone.h"
#include "model/tokenizer.h"
#include "tasks/glue.h"

namespace dt::tasks {

struct TaskList {
  std::vector<const TaskInfo*> tasks;  // in --task order
  std::vector<int64_t> head_offsets;   // the first stacked head column of each task
  int64_t head_columns = 0;            // Σ num_labels: the backbone's num_labels

  bool multi() const { return tasks.size() > 1; }
  std::string names() const;  // "sst2,cola"
  // The index of `name` in the list; UsageError when the run has no such task.
  int64_t index_of(const std::string& name) const;
};

// "sst2,cola,rte" (spaces ignored). UsageError for an empty list, an unknown task (naming the known
// ones) or a task named twice.
TaskList parse_task_list(const std::string& arg);

// Sets the batch's task and head columns (single-task lists leave head_size 0: every column).
void set_task_head(model::Batch& batch, const TaskList& list, int64_t task);

// T5 label-word heads: the first token of every task's label words, stacked in list order (two tasks
// may share a word; within a task they must differ, as label_first_token_ids checks).
std::vector<int64_t> stacked_label_token_ids(const TaskList& list, const model::Tokenizer& tokenizer);

enum class MixKind { Proportional, Temperature };
MixKind parse_mix_kind(const std::string& name);  // proportional | temperature; UsageError otherwise
enum class BatchKind { OneTask, Mixed };
BatchKind parse_batch_kind(const std::string& name);  // task | mixed; UsageError otherwise

struct MixOptions {
  MixKind kind = MixKind::Proportional;
  double temperature = 2.0;  // MixKind::Temperature
  int64_t cap = 0;           // MixKind::Proportional: examples counted per task at most (0: no cap)
  BatchKind batch = BatchKind::OneTask;  // one task per batch, or a task drawn per row
};

// The probability of each task per batch (see the note on top); UsageError for a temperature <= 0 or
// a negative cap.
std::vector<double> mixing_rates(const std::vector<int64_t>& sizes, const MixOptions& options);

class MultiTaskSampler {
 public:
  // One task's share of a batch. A batch is one part (BatchKind::OneTask) or one per task drawn.
  struct Part {
    int64_t task = 0;
    std::vector<int64_t> rows;  // this rank's rows of that task's training set
  };
  struct State {
    int64_t batches = 0;  // global batches drawn (all ranks draw the same sequence)
    std::vector<dist::DistributedSampler::State> tasks;
  };

  // sizes: each task's training-set size. Task t's order is seeded with options.seed + t (task 0's is
  // the single-task run's own).
  MultiTaskSampler(const std::vector<int64_t>& sizes, int rank, int world_size, const MixOptions& mix,
                   const dist::SamplerOptions& options);

  int64_t num_tasks() const { return static_cast<int64_t>(samplers_.size()); }
  const std::vector<double>& rates() const { return rates_; }
  BatchKind batch_kind() const { return batch_kind_; }
  // The task of global batch `index` (same on every rank; BatchKind::OneTask).
  int64_t task_of(int64_t index) const;
  // How many of the `batch_size` rows of global batch `index` each task gets (same on every rank):
  // all to task_of(index) with BatchKind::OneTask, one draw per row with BatchKind::Mixed.
  std::vector<int64_t> task_counts(int64_t index, int64_t batch_size) const;
  // The next batch: the tasks in it (in task order, none empty) and this rank's rows of each, at most
  // `batch_size` in all (fewer where a task's epoch ends, as DistributedSampler::next_batch).
  std::vector<Part> next_batch(int64_t batch_size);

  State state() const;
  void set_state(const State& state);  // DistributedSampler::set_state's re-sharding rules per task
  const dist::DistributedSampler& task_sampler(int64_t task) const { return samplers_.at(task); }
  dist::DistributedSampler& task_sampler(int64_t task) { return samplers_.at(task); }

  // The state as one line of text for a checkpoint ("mix-v1 batches=12 tasks=3 0:0 0:64 1:8"), and back;
  // UsageError when the text is malformed or holds another number of tasks.
  std::string state_text() const;
  void set_state_text(const std::string& text);

 private:
  std::vector<dist::DistributedSampler> samplers_;
  std::vector<double> rates_;
  std::vector<double> cumulative_;
  uint64_t seed_ = 0;
  BatchKind batch_kind_ = BatchKind::OneTask;
  int64_t batches_ = 0;
  int64_t task_at(double u) const;  // the task whose cumulative-rate interval holds u in [0, 1)
};

}  // namespace dt::tasks
