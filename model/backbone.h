// model/backbone.h — the frozen pretrained networks that deltatune fine-tunes.
//
// Design note: headers stay light (ATen/core/Tensor.h, ~3 s to compile) and torch::nn lives in the
// .cpp files behind this interface, so that peft/, sparse/, dist/ and launch/ never pay for
// <torch/torch.h>. Parameter names are the Hugging Face names of the architecture (T5, BERT, Llama),
// so weight files, FISH include/exclude globs, checkpoints and exports all speak one language.
// Methods attach through hooks() (see hooks.h); the backbone never learns about methods.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/hooks.h"

namespace dt::model {

// One batch; tensors a task does not use stay undefined.
struct Batch {
  at::Tensor input_ids;          // [B, T] int64
  at::Tensor attention_mask;     // [B, T] int64 (1 = token, 0 = padding)
  at::Tensor labels;             // [B] int64 class ids (classification) or [B, T] token ids (LM)
  at::Tensor decoder_input_ids;  // [B, T'] (T5 seq2seq)
  at::Tensor token_type_ids;     // [B, T] BERT segment ids of sentence pairs (undefined: all 0)
  // Multi-task runs stack every task's head into one (tasks/multitask.h): this batch's task owns the
  // columns [head_offset, head_offset + head_size) of it, and the logits and the loss are those columns'
  // (head_size 0: every column, a single-task run). Float labels mean regression on the one column (MSE).
  int64_t head_offset = 0;
  int64_t head_size = 0;
  // The batch's task, an index into the run's --task list: what task-conditioned methods read.
  int64_t task = 0;
};

struct ForwardResult {
  at::Tensor logits;  // [B, num_labels] for classification, [B, T, vocab] for LM
  at::Tensor loss;    // scalar mean cross-entropy when labels are given
  std::vector<at::Tensor> hidden_states;  // per block output, when requested (LST reads them)
};

// The task head's logits of `batch` from the stacked heads' output [B, columns], and the loss when the
// batch has labels: cross-entropy over those logits for class ids, the mean squared error of the one
// column for float labels (HF's problem_type "regression", which STS-B uses). Backbones with a
// classifier head call it (T5's label words score vocabulary entries and compute their own).
void task_head_output(const at::Tensor& all_logits, const Batch& batch, ForwardResult& result);

struct ForwardOptions {
  bool return_hidden_states = false;
};

class Backbone {
 public:
  virtual ~Backbone() = default;
  virtual const ModelConfig& config() const = 0;
  // Every parameter (frozen or not) under its HF name, in a stable registration order.
  virtual std::vector<std::pair<std::string, at::Tensor>> named_parameters() const = 0;
  // Every insertion point, in forward order.
  virtual std::vector<SiteInfo> sites() const = 0;
  virtual ForwardResult forward(const Batch& batch, const ForwardOptions& options = {}) = 0;
  virtual void set_training(bool training) = 0;  // dropout on/off
  // Classes of the task head (0: none, e.g. a Llama LM or a BERT encoder without a head).
  virtual int64_t num_labels() const = 0;
  // Classification by label words (T5): the first token id of each class's word, given once the
  // tokenizer is known; the forward scores those vocabulary entries. Other backbones have none.
  virtual bool reads_label_words() const { return false; }
  virtual void set_label_token_ids(std::vector<int64_t> ids);
  virtual const std::vector<int64_t>& label_token_ids() const;
  HookSet& hooks() { return hooks_; }
  const HookSet& hooks() const { return hooks_; }

 protected:
  HookSet hooks_;
};

}  // namespace dt::model
