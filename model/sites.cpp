// model/sites.cpp — the hook sites of each architecture, from its config alone.
//
// The names here are the contract between backbones (which consult hooks at these names) and methods
// (which attach at them); see hooks.h for the suffixes.
#include "model/config.h"
#include "util/error.h"

namespace dt::model {
namespace {

struct SiteList {
  std::vector<SiteInfo> sites;
  void add(std::string name, SiteKind kind, int64_t in, int64_t out, std::string weight = {}) {
    sites.push_back(SiteInfo{std::move(name), kind, in, out, std::move(weight)});
  }
  // q, k, v, o, attn_out of one attention module. `q_w` etc. are the weights' module names.
  void attention(const std::string& path, const std::string& out_path, int64_t d_model, int64_t d_kv_in,
                 int64_t q_out, int64_t kv_out, const std::string& q_w, const std::string& k_w,
                 const std::string& v_w, const std::string& o_w) {
    add(path + ".q", SiteKind::Projection, d_model, q_out, q_w + ".weight");
    add(path + ".k", SiteKind::Projection, d_kv_in, kv_out, k_w + ".weight");
    add(path + ".v", SiteKind::Projection, d_kv_in, kv_out, v_w + ".weight");
    add(out_path + ".o", SiteKind::Projection, q_out, d_model, o_w + ".weight");
    add(out_path + ".attn_out", SiteKind::AttentionOutput, d_model, d_model);
  }
  // `in_weight`: the (first) input linear of the FFN (T5 wi / wi_0, BERT intermediate.dense, Llama
  // up_proj); `out_weight`: its output linear.
  void ffn(const std::string& path, int64_t d_model, int64_t d_ff, const std::string& in_weight,
           const std::string& out_weight) {
    add(path + ".ffn_in", SiteKind::FfnInput, d_model, d_model);
    add(path + ".wi", SiteKind::FfnIntermediate, d_model, d_ff, in_weight + ".weight");
    add(path + ".ffn_out", SiteKind::FfnOutput, d_model, d_model, out_weight + ".weight");
  }
  void norm(const std::string& path, int64_t d) { add(path + ".ln", SiteKind::LayerNorm, d, d, path + ".weight"); }
  void block(const std::string& path, int64_t d) {
    add(path + ".residual", SiteKind::Residual, d, d);
    add(path + ".block_out", SiteKind::BlockOutput, d, d);
  }
};

std::vector<SiteInfo> t5_sites(const ModelConfig& c) {
  SiteList s;
  const int64_t inner = c.num_heads * c.d_kv, d = c.d_model;
  s.add("shared", SiteKind::Embedding, c.vocab_size, d, "shared.weight");
  const std::string wo = "DenseReluDense.wo";
  const std::string wi = c.gated_ffn ? "DenseReluDense.wi_0" : "DenseReluDense.wi";
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "encoder.block." + std::to_string(i);
    const std::string a = b + ".layer.0.SelfAttention";
    s.norm(b + ".layer.0.layer_norm", d);
    s.attention(a, a, d, d, inner, inner, a + ".q", a + ".k", a + ".v", a + ".o");
    s.norm(b + ".layer.1.layer_norm", d);
    s.ffn(b + ".layer.1.DenseReluDense", d, c.d_ff, b + ".layer.1." + wi, b + ".layer.1." + wo);
    s.block(b, d);
  }
  s.norm("encoder.final_layer_norm", d);
  for (int64_t i = 0; i < c.num_decoder_layers; ++i) {
    const std::string b = "decoder.block." + std::to_string(i);
    const std::string a = b + ".layer.0.SelfAttention";
    const std::string x = b + ".layer.1.EncDecAttention";
    s.norm(b + ".layer.0.layer_norm", d);
    s.attention(a, a, d, d, inner, inner, a + ".q", a + ".k", a + ".v", a + ".o");
    s.norm(b + ".layer.1.layer_norm", d);
    s.attention(x, x, d, d, inner, inner, x + ".q", x + ".k", x + ".v", x + ".o");
    s.norm(b + ".layer.2.layer_norm", d);
    s.ffn(b + ".layer.2.DenseReluDense", d, c.d_ff, b + ".layer.2." + wi, b + ".layer.2." + wo);
    s.block(b, d);
  }
  s.norm("decoder.final_layer_norm", d);
  s.add("lm_head", SiteKind::Head, d, c.vocab_size, c.tie_word_embeddings ? "shared.weight" : "lm_head.weight");
  return s.sites;
}

std::vector<SiteInfo> bert_sites(const ModelConfig& c) {
  SiteList s;
  const int64_t d = c.d_model;
  s.add("embeddings", SiteKind::Embedding, c.vocab_size, d, "embeddings.word_embeddings.weight");
  s.norm("embeddings.LayerNorm", d);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string l = "encoder.layer." + std::to_string(i);
    const std::string a = l + ".attention.self", o = l + ".attention.output";
    s.attention(a, o, d, d, d, d, a + ".query", a + ".key", a + ".value", o + ".dense");
    s.norm(o + ".LayerNorm", d);
    s.ffn(l, d, c.d_ff, l + ".intermediate.dense", l + ".output.dense");
    s.norm(l + ".output.LayerNorm", d);
    s.block(l, d);
  }
  return s.sites;
}

std::vector<SiteInfo> llama_sites(const ModelConfig& c) {
  SiteList s;
  const int64_t d = c.d_model, q_out = c.num_heads * c.d_kv, kv_out = c.num_kv_heads * c.d_kv;
  s.add("model.embed_tokens", SiteKind::Embedding, c.vocab_size, d, "model.embed_tokens.weight");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i);
    const std::string a = l + ".self_attn";
    s.norm(l + ".input_layernorm", d);
    s.attention(a, a, d, d, q_out, kv_out, a + ".q_proj", a + ".k_proj", a + ".v_proj", a + ".o_proj");
    s.norm(l + ".post_attention_layernorm", d);
    s.ffn(l + ".mlp", d, c.d_ff, l + ".mlp.up_proj", l + ".mlp.down_proj");
    s.block(l, d);
  }
  s.norm("model.norm", d);
  s.add("lm_head", SiteKind::Head, d, c.vocab_size,
        c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  return s.sites;
}

}  // namespace

std::vector<SiteInfo> describe_sites(const ModelConfig& config) {
  switch (config.arch) {
    case Arch::T5: return t5_sites(config);
    case Arch::Bert: return bert_sites(config);
    case Arch::Llama: return llama_sites(config);
  }
  DT_FAIL("describe_sites: unknown architecture of '" + config.name + "'");
}

}  // namespace dt::model
