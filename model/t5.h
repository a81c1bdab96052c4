// model/t5.h — T5 v1.0 and v1.1 (Raffel et al. 2020) as a Backbone with HF parameter names.
//
// Design note: the parameters are created from describe(config), so their names, shapes and order
// are those of the meta description and of HF checkpoints by construction; loading a checkpoint is
// "match by name, check the shape". The torch::nn modules live in t5.cpp behind a pimpl.
//
// Heads, chosen by num_labels and T5Head:
//   num_labels == 0         seq2seq LM: labels [B, T'] are target ids (-100 ignored); the decoder input
//                           is labels shifted right with pad 0 as the start token, unless given.
//   LabelWords (default)    classification the T5 way: class c is the label word whose first token id is
//                           label_token_ids[c]; the decoder runs one step from the start token, the
//                           logits at those ids are the class logits, the loss is the cross-entropy over
//                           the whole vocabulary on the label word's token (as T5 trains).
//   Classifier              "classifier.{weight,bias}" on the mask-mean-pooled encoder output; no decoder.
// return_hidden_states gives every encoder block output, then every decoder block output (pre final norm).
//
// Dtypes: the forward computes in the weights' dtype (float32, or bf16 for a bf16 checkpoint, which is
// then used as mapped, without a copy), as HF's T5 does: layer-norm variance and attention softmax in
// float32 and cast back, every linear's input cast to its weight's dtype (a method's float32 output may
// have widened the stream), logits and loss in float32.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/backbone.h"

namespace dt::model {

enum class T5Head { LabelWords, Classifier };

class T5Backbone : public Backbone {
 public:
  // random_init = false leaves the backbone's tensors uninitialized (allocated, never touched): for a
  // loader that replaces them all right away (model/load.cpp). The parameters get config.dtype (the
  // file's dtype when loaded: bf16 weights stay bf16 and are the mapped file's pages themselves); the
  // Classifier head is float32 and randomly initialized in every case.
  T5Backbone(const ModelConfig& config, int64_t num_labels, T5Head head = T5Head::LabelWords,
             bool random_init = true);
  ~T5Backbone() override;

  const ModelConfig& config() const override;
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const override;
  std::vector<SiteInfo> sites() const override;
  ForwardResult forward(const Batch& batch, const ForwardOptions& options = {}) override;
  void set_training(bool training) override;

  // First token id of each class's label word (e.g. SST-2: "negative", "positive"), num_labels of them.
  bool reads_label_words() const override { return head() == T5Head::LabelWords; }
  void set_label_token_ids(std::vector<int64_t> ids) override;
  const std::vector<int64_t>& label_token_ids() const override;
  T5Head head() const;
  int64_t num_labels() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Declared here as in model/load.h (same signature): a T5Backbone with the LabelWords head.
std::unique_ptr<Backbone> make_t5(const ModelConfig& config, int64_t num_labels);
// The same without the random init (the weights are about to be replaced from a file).
std::unique_ptr<Backbone> make_t5_uninitialized(const ModelConfig& config, int64_t num_labels);

}  // namespace dt::model
