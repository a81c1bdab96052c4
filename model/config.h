// model/config.h — architecture configs and the meta description (names, shapes, dtypes) of a model.
//
// Design note: `describe()` lists every tensor of a model without allocating it, so `plan` can account
// for T5-11B in a few MB, and methods can count their trainable parameters in closed form from it.
// Named configs follow the published HF configs; tests pin the totals to the published counts.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dt::model {

enum class Arch { T5, Bert, Llama };

struct ModelConfig {
  std::string name;  // "t5-base", "stories260K", a file path, ...
  Arch arch = Arch::T5;
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t d_ff = 0;
  int64_t d_kv = 0;  // per-head size
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // Llama grouped-query attention; = num_heads elsewhere
  int64_t num_layers = 0;    // encoder layers (T5, BERT) or decoder layers (Llama)
  int64_t num_decoder_layers = 0;  // T5 only
  // T5
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  bool gated_ffn = false;        // T5 v1.1 gated-GELU, Llama SwiGLU
  bool tie_word_embeddings = true;
  std::string activation = "relu";  // relu | gelu_new | gelu | silu
  // BERT
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  // Llama
  int64_t max_seq_len = 512;
  double rope_theta = 10000.0;
  double norm_eps = 1e-6;
  c10::ScalarType dtype = c10::ScalarType::Float;
};

struct TensorMeta {
  std::string name;
  std::vector<int64_t> shape;
  c10::ScalarType dtype = c10::ScalarType::Float;
  int64_t numel() const;
};

// Throws dt::UsageError naming the known configs when `name` is unknown.
ModelConfig named_config(const std::string& name);
std::vector<std::string> named_config_names();
// Every parameter of the backbone (no task head), in registration order, without allocating.
std::vector<TensorMeta> describe(const ModelConfig& config);
int64_t total_params(const std::vector<TensorMeta>& metas);

}  // namespace dt::model

#include "model/hooks.h"

namespace dt::model {

// Every hook site of the backbone for `config`, in forward order, from the config alone (no allocation):
// `plan` and the PEFT methods count what they would create from it, and every backbone's sites()
// returns exactly this list (tests check that each listed site is really consulted in forward).
std::vector<SiteInfo> describe_sites(const ModelConfig& config);

}  // namespace dt::model
