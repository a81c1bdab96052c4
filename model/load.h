// model/load.h — a backbone from `--model`: a named config (random init) or a weights file.
//
// Design note: one entry point, dispatched by what the user gave:
//   * a directory      DIR/model.safetensors (a Hugging Face model directory: config.json beside it);
//   * "*.bin"          llama2.c checkpoint (model/llama2c.h), Llama;
//   * "*.safetensors"  HF-named weights; the architecture from the tensor names (Llama:
//                      model.embed_tokens.weight, T5: shared.weight, BERT: embeddings.* with or
//                      without HF's "bert." prefix), the config from the file's __metadata__ or a
//                      config.json beside it (HF config.json keys in both);
//   * anything else    model::named_config(name) and the architecture's factory (random init,
//                      seeded by the caller with torch::manual_seed).
// Weights are installed with set_data, so float32 tensors of a mapped file stay zero-copy views: the
// ranks of a node share one copy of the frozen weights in the page cache. Every shape is checked
// and every missing or unexpected tensor named (all of them, in one message).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/backbone.h"
#include "model/config.h"

namespace dt::model {

// Throws dt::UsageError naming the file (or name) and the problem.
std::unique_ptr<Backbone> load_backbone(const std::string& path_or_name, int64_t num_labels);

// The config load_backbone would build, without reading any weights (plan, checks).
ModelConfig read_model_config(const std::string& path_or_name);

// A directory becomes DIR/model.safetensors (a UsageError if it has none); anything else is returned as is.
std::string resolve_model_path(const std::string& path_or_name);

// The architecture's factory for `config` (random init).
std::unique_ptr<Backbone> make_backbone(const ModelConfig& config, int64_t num_labels);

// Factories, one per architecture: make_llama in model/llama.cpp, make_t5 in model/t5.cpp and
// make_bert in model/bert.cpp (written by the T5/BERT side; same signatures as in t5.h / bert.h).
std::unique_ptr<Backbone> make_llama(const ModelConfig& config, int64_t num_labels);
std::unique_ptr<Backbone> make_t5(const ModelConfig& config, int64_t num_labels);
std::unique_ptr<Backbone> make_bert(const ModelConfig& config, int64_t num_labels);

// Installs `tensors` (HF names) into `backbone`'s parameters by name. Every backbone parameter must
// be present with its exact shape, except task-head parameters (score.*, classifier.*), which keep
// their initialization when absent, and lm_head.weight when the file is a classifier's (HF's
// LlamaForSequenceClassification saves score.weight and no LM head); names the backbone does not have are errors, except known
// non-parameters of HF files (rotary_emb.inv_freq, position_ids, T5's encoder/decoder.embed_tokens
// aliases of shared.weight, BERT's cls.* pretraining heads) and a task head the backbone lacks
// (a classification checkpoint read as a plain LM). `source` names the file in messages.
void load_weights(Backbone& backbone, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                  const std::string& source);

// The config keys load_backbone reads back from a safetensors file's __metadata__ (HF config.json
// names, values as strings), so an exported Llama is self-describing.
std::map<std::string, std::string> config_metadata(const ModelConfig& config);

}  // namespace dt::model
