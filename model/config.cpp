// model/config.cpp — the named configs (published HF values) and the meta description of each arch.
//
// describe() must list tensors in the same order as the backbones register them (T5Backbone,
// BertBackbone, the Llama backbone), so that plan, method accounting and weight files agree. The
// published totals are pinned by tests/model/test_config.cpp.
#include "model/config.h"

#include <functional>
#include <map>

#include "util/error.h"

namespace dt::model {

int64_t TensorMeta::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// T5 v1.0 (Raffel et al. 2020): ReLU FFN, LM head tied to the shared embedding.
ModelConfig t5_v1_0(const std::string& name, int64_t d_model, int64_t d_ff, int64_t d_kv, int64_t heads,
                    int64_t layers) {
  ModelConfig c;
  c.name = name;
  c.arch = Arch::T5;
  c.vocab_size = 32128;
  c.d_model = d_model;
  c.d_ff = d_ff;
  c.d_kv = d_kv;
  c.num_heads = heads;
  c.num_kv_heads = heads;
  c.num_layers = layers;
  c.num_decoder_layers = layers;
  c.gated_ffn = false;
  c.tie_word_embeddings = true;
  c.activation = "relu";
  c.norm_eps = 1e-6;
  return c;
}

// T5 v1.1: gated-GELU FFN (wi_0, wi_1), untied LM head.
ModelConfig t5_v1_1(const std::string& name, int64_t d_model, int64_t d_ff, int64_t d_kv, int64_t heads,
                    int64_t layers) {
  ModelConfig c = t5_v1_0(name, d_model, d_ff, d_kv, heads, layers);
  c.gated_ffn = true;
  c.tie_word_embeddings = false;
  c.activation = "gelu_new";
  return c;
}

ModelConfig bert(const std::string& name, int64_t vocab, int64_t d_model, int64_t d_ff, int64_t heads,
                 int64_t layers, int64_t positions) {
  ModelConfig c;
  c.name = name;
  c.arch = Arch::Bert;
  c.vocab_size = vocab;
  c.d_model = d_model;
  c.d_ff = d_ff;
  c.d_kv = d_model / heads;
  c.num_heads = heads;
  c.num_kv_heads = heads;
  c.num_layers = layers;
  c.activation = "gelu";
  c.max_position_embeddings = positions;
  c.type_vocab_size = 2;
  c.tie_word_embeddings = false;
  c.norm_eps = 1e-12;
  return c;
}

ModelConfig llama(const std::string& name, int64_t vocab, int64_t dim, int64_t hidden, int64_t layers,
                  int64_t heads, int64_t kv_heads, int64_t seq_len, bool tied) {
  ModelConfig c;
  c.name = name;
  c.arch = Arch::Llama;
  c.vocab_size = vocab;
  c.d_model = dim;
  c.d_ff = hidden;
  c.d_kv = dim / heads;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.num_layers = layers;
  c.gated_ffn = true;
  c.tie_word_embeddings = tied;
  c.activation = "silu";
  c.max_seq_len = seq_len;
  c.norm_eps = 1e-5;  // llama2.c's rmsnorm
  return c;
}

// Name -> factory, in the order `named_config_names()` lists them.
const std::vector<std::pair<std::string, std::function<ModelConfig()>>>& registry() {
  static const std::vector<std::pair<std::string, std::function<ModelConfig()>>> configs = {
      {"t5-small", [] { return t5_v1_0("t5-small", 512, 2048, 64, 8, 6); }},
      {"t5-base", [] { return t5_v1_0("t5-base", 768, 3072, 64, 12, 12); }},
      {"t5-large", [] { return t5_v1_0("t5-large", 1024, 4096, 64, 16, 24); }},
      {"t5-3b", [] { return t5_v1_0("t5-3b", 1024, 16384, 128, 32, 24); }},
      {"t5-11b", [] { return t5_v1_0("t5-11b", 1024, 65536, 128, 128, 24); }},
      {"t5-v1_1-small", [] { return t5_v1_1("t5-v1_1-small", 512, 1024, 64, 6, 8); }},
      {"t5-v1_1-base", [] { return t5_v1_1("t5-v1_1-base", 768, 2048, 64, 12, 12); }},
      {"t5-v1_1-large", [] { return t5_v1_1("t5-v1_1-large", 1024, 2816, 64, 16, 24); }},
      {"t5-v1_1-xl", [] { return t5_v1_1("t5-v1_1-xl", 2048, 5120, 64, 32, 24); }},
      {"t5-v1_1-xxl", [] { return t5_v1_1("t5-v1_1-xxl", 4096, 10240, 64, 64, 24); }},
      {"bert-base", [] { return bert("bert-base", 30522, 768, 3072, 12, 12, 512); }},
      {"stories260K", [] { return llama("stories260K", 512, 64, 172, 5, 8, 4, 512, true); }},
      // Tiny configs for tests: every code path (several heads, layers, buckets) at a few KB.
      {"tiny-t5",
       [] {
         ModelConfig c = t5_v1_0("tiny-t5", 16, 32, 4, 4, 2);
         c.vocab_size = 64;
         c.num_decoder_layers = 2;
         c.relative_attention_num_buckets = 8;
         c.relative_attention_max_distance = 16;
         return c;
       }},
      {"tiny-t5-v1_1",
       [] {
         ModelConfig c = t5_v1_1("tiny-t5-v1_1", 16, 24, 4, 4, 2);
         c.vocab_size = 64;
         c.num_decoder_layers = 3;  // unequal depths exercise num_decoder_layers
         c.relative_attention_num_buckets = 8;
         c.relative_attention_max_distance = 16;
         return c;
       }},
      {"tiny-bert", [] { return bert("tiny-bert", 64, 16, 32, 4, 2, 32); }},
      {"tiny-llama", [] { return llama("tiny-llama", 64, 16, 40, 2, 4, 2, 32, false); }},
  };
  return configs;
}

void add(std::vector<TensorMeta>& out, std::string name, std::vector<int64_t> shape, c10::ScalarType dtype) {
  out.push_back(TensorMeta{std::move(name), std::move(shape), dtype});
}

// T5: HF T5ForConditionalGeneration minus the aliases encoder/decoder.embed_tokens of shared.weight.
void describe_t5(const ModelConfig& c, std::vector<TensorMeta>& out) {
  const int64_t d = c.d_model, inner = c.num_heads * c.d_kv;
  add(out, "shared.weight", {c.vocab_size, d}, c.dtype);
  auto attention = [&](const std::string& p, bool bias) {
    add(out, p + ".q.weight", {inner, d}, c.dtype);
    add(out, p + ".k.weight", {inner, d}, c.dtype);
    add(out, p + ".v.weight", {inner, d}, c.dtype);
    add(out, p + ".o.weight", {d, inner}, c.dtype);
    if (bias) add(out, p + ".relative_attention_bias.weight", {c.relative_attention_num_buckets, c.num_heads}, c.dtype);
  };
  auto ffn = [&](const std::string& p) {
    if (c.gated_ffn) {
      add(out, p + ".DenseReluDense.wi_0.weight", {c.d_ff, d}, c.dtype);
      add(out, p + ".DenseReluDense.wi_1.weight", {c.d_ff, d}, c.dtype);
    } else {
      add(out, p + ".DenseReluDense.wi.weight", {c.d_ff, d}, c.dtype);
    }
    add(out, p + ".DenseReluDense.wo.weight", {d, c.d_ff}, c.dtype);
    add(out, p + ".layer_norm.weight", {d}, c.dtype);
  };
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "encoder.block." + std::to_string(i);
    attention(b + ".layer.0.SelfAttention", i == 0);
    add(out, b + ".layer.0.layer_norm.weight", {d}, c.dtype);
    ffn(b + ".layer.1");
  }
  add(out, "encoder.final_layer_norm.weight", {d}, c.dtype);
  for (int64_t i = 0; i < c.num_decoder_layers; ++i) {
    const std::string b = "decoder.block." + std::to_string(i);
    attention(b + ".layer.0.SelfAttention", i == 0);
    add(out, b + ".layer.0.layer_norm.weight", {d}, c.dtype);
    attention(b + ".layer.1.EncDecAttention", false);
    add(out, b + ".layer.1.layer_norm.weight", {d}, c.dtype);
    ffn(b + ".layer.2");
  }
  add(out, "decoder.final_layer_norm.weight", {d}, c.dtype);
  if (!c.tie_word_embeddings) add(out, "lm_head.weight", {c.vocab_size, d}, c.dtype);
}

// BERT: HF BertModel (with pooler), the names BertForSequenceClassification gives under "bert.".
void describe_bert(const ModelConfig& c, std::vector<TensorMeta>& out) {
  const int64_t d = c.d_model;
  auto linear = [&](const std::string& p, int64_t in, int64_t outf) {
    add(out, p + ".weight", {outf, in}, c.dtype);
    add(out, p + ".bias", {outf}, c.dtype);
  };
  auto layer_norm = [&](const std::string& p) {
    add(out, p + ".weight", {d}, c.dtype);
    add(out, p + ".bias", {d}, c.dtype);
  };
  add(out, "embeddings.word_embeddings.weight", {c.vocab_size, d}, c.dtype);
  add(out, "embeddings.position_embeddings.weight", {c.max_position_embeddings, d}, c.dtype);
  add(out, "embeddings.token_type_embeddings.weight", {c.type_vocab_size, d}, c.dtype);
  layer_norm("embeddings.LayerNorm");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string l = "encoder.layer." + std::to_string(i);
    linear(l + ".attention.self.query", d, d);
    linear(l + ".attention.self.key", d, d);
    linear(l + ".attention.self.value", d, d);
    linear(l + ".attention.output.dense", d, d);
    layer_norm(l + ".attention.output.LayerNorm");
    linear(l + ".intermediate.dense", d, c.d_ff);
    linear(l + ".output.dense", c.d_ff, d);
    layer_norm(l + ".output.LayerNorm");
  }
  linear("pooler.dense", d, d);
}

// Llama: HF LlamaForCausalLM names; lm_head.weight only when untied.
void describe_llama(const ModelConfig& c, std::vector<TensorMeta>& out) {
  const int64_t d = c.d_model, kv = c.num_kv_heads * c.d_kv;
  add(out, "model.embed_tokens.weight", {c.vocab_size, d}, c.dtype);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i);
    add(out, l + ".self_attn.q_proj.weight", {c.num_heads * c.d_kv, d}, c.dtype);
    add(out, l + ".self_attn.k_proj.weight", {kv, d}, c.dtype);
    add(out, l + ".self_attn.v_proj.weight", {kv, d}, c.dtype);
    add(out, l + ".self_attn.o_proj.weight", {d, c.num_heads * c.d_kv}, c.dtype);
    add(out, l + ".mlp.gate_proj.weight", {c.d_ff, d}, c.dtype);
    add(out, l + ".mlp.up_proj.weight", {c.d_ff, d}, c.dtype);
    add(out, l + ".mlp.down_proj.weight", {d, c.d_ff}, c.dtype);
    add(out, l + ".input_layernorm.weight", {d}, c.dtype);
    add(out, l + ".post_attention_layernorm.weight", {d}, c.dtype);
  }
  add(out, "model.norm.weight", {d}, c.dtype);
  if (!c.tie_word_embeddings) add(out, "lm_head.weight", {c.vocab_size, d}, c.dtype);
}

}  // namespace

ModelConfig named_config(const std::string& name) {
  for (const auto& [key, make] : registry()) {
    if (key == name) return make();
  }
  std::string known;
  for (const auto& [key, make] : registry()) known += (known.empty() ? "" : ", ") + key;
  throw UsageError("unknown model '" + name + "' (known configs: " + known +
                   "; or give a weights file: .safetensors, llama2.c .bin)");
}

std::vector<std::string> named_config_names() {
  std::vector<std::string> names;
  for (const auto& entry : registry()) names.push_back(entry.first);
  return names;
}

std::vector<TensorMeta> describe(const ModelConfig& config) {
  DT_CHECK(config.d_model > 0 && config.vocab_size > 0 && config.num_heads > 0,
           "describe: config '" + config.name + "' has no sizes");
  std::vector<TensorMeta> out;
  switch (config.arch) {
    case Arch::T5: describe_t5(config, out); break;
    case Arch::Bert: describe_bert(config, out); break;
    case Arch::Llama: describe_llama(config, out); break;
  }
  return out;
}

int64_t total_params(const std::vector<TensorMeta>& metas) {
  int64_t n = 0;
  for (const auto& m : metas) n += m.numel();
  return n;
}

}  // namespace dt::model
