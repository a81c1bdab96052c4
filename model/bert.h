// model/bert.h — BERT encoder (Devlin et al. 2019) as a Backbone with HF parameter names.
//
// Design note: like T5Backbone, the parameters are created from describe(config) (HF BertModel names
// without the "bert." prefix of BertForSequenceClassification) plus the task head "classifier.{weight,
// bias}" on the pooled [CLS] output when num_labels > 0. Post-LN, GELU (erf), learned positions.
// Sites: describe_sites(config). Without a head (num_labels == 0) ForwardResult::logits is the pooled
// output [B, d_model].
// return_hidden_states gives every layer's output.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/backbone.h"

namespace dt::model {

class BertBackbone : public Backbone {
 public:
  BertBackbone(const ModelConfig& config, int64_t num_labels);
  ~BertBackbone() override;

  const ModelConfig& config() const override;
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const override;
  std::vector<SiteInfo> sites() const override;
  ForwardResult forward(const Batch& batch, const ForwardOptions& options = {}) override;
  void set_training(bool training) override;
  int64_t num_labels() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Declared here as in model/load.h (same signature).
std::unique_ptr<Backbone> make_bert(const ModelConfig& config, int64_t num_labels);

}  // namespace dt::model
