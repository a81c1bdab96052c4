// model/llama.h — a Llama-style decoder (RMSNorm, rotary, SwiGLU, grouped-query attention).
//
// Design note: the network is written as plain tensor functions over named parameters rather than
// torch::nn modules, because every weight must pass through hooks().weight(name, W) at use (FISH,
// DSEE, LoRA-on-FFN rewrite weights there) and every activation of note through hooks().output at a
// named site (see hooks.h and describe_sites in config.h, which sites() returns). Parameters carry HF
// Llama names and HF's rotary convention (rotate_half); they are created frozen (requires_grad off),
// and may be zero-copy views of a mapped weights file (model/load.h) — nothing here writes to them.
//
// Positions are 0..T-1 for every row (right padding; a left-padded batch would need position ids),
// shifted by the prefix length in an attention with a prefix hook (HF's past_key_values semantics).
// Generation uses forward_step() with a KvCache: keys and values of earlier positions are kept
// (after rotary), so each new token costs one row of attention instead of a full forward pass.
// run.c's xorshift sampler is reproduced so that a seed means the same thing as in llama2.c.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/backbone.h"

namespace dt::model {

// Keys/values per layer, [B, kv_heads, capacity, head_dim]; `length` positions are filled.
struct KvCache {
  std::vector<at::Tensor> k, v;
  int64_t length = 0;
  int64_t capacity() const { return k.empty() ? 0 : k.front().size(2); }
};

class LlamaBackbone final : public Backbone {
 public:
  // Random init (HF's: linear and embedding weights N(0, 0.02), norms 1), from torch's global
  // generator: seed it with torch::manual_seed first. num_labels > 0 adds "score.weight".
  // random_init = false leaves the backbone weights uninitialized (never touched, so they cost no
  // memory) for a loader that installs every one of them; score.weight is initialized regardless.
  LlamaBackbone(const ModelConfig& config, int64_t num_labels, bool random_init = true);

  const ModelConfig& config() const override { return config_; }
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const override;
  std::vector<SiteInfo> sites() const override;
  // LM (num_labels == 0): logits [B, T, vocab]; with labels [B, T] the loss is the mean shifted
  // next-token cross-entropy over labels != -100. Classification: logits [B, num_labels] from the
  // final hidden state of each row's last non-padding token; with labels [B] the mean cross-entropy.
  // Input hooks may prepend positions (prompt tuning); the mask and LM labels are extended to match
  // and hidden states / logits cover the prepended positions too.
  ForwardResult forward(const Batch& batch, const ForwardOptions& options = {}) override;
  void set_training(bool training) override { training_ = training; }  // no dropout in Llama

  int64_t num_labels() const override { return num_labels_; }
  // Replaces a parameter's data with `value` (same shape; converted to float when needed, otherwise
  // not copied, so a mapped view stays a view). Throws dt::Error naming the parameter on mismatch.
  void set_parameter(const std::string& name, const at::Tensor& value);

  // ---- generation (no autograd) ----
  KvCache new_cache(int64_t batch, int64_t capacity) const;
  // Runs `ids` [B, T_new] at positions cache.length .. cache.length + T_new - 1, appends their keys
  // and values to `cache` and returns the LM logits [B, T_new, vocab].
  at::Tensor forward_step(const at::Tensor& ids, KvCache& cache);

 private:
  struct Layer {
    std::string path;  // "model.layers.{i}"
    at::Tensor input_norm, wq, wk, wv, wo, post_norm, gate, up, down;
  };
  at::Tensor add_param(const std::string& name, at::Tensor value);
  at::Tensor weight(const std::string& name, const at::Tensor& w) const { return hooks_.weight(name, w); }
  at::Tensor rms_norm(const std::string& path, const at::Tensor& x, const at::Tensor& w) const;
  // One decoder layer. `cache` (may be null) supplies earlier keys/values and receives the new ones.
  at::Tensor layer_forward(size_t index, const at::Tensor& x, const at::Tensor& cos,
                           const at::Tensor& sin, const at::Tensor& key_mask, int64_t past,
                           KvCache* cache) const;
  at::Tensor lm_logits(const at::Tensor& hidden) const;

  ModelConfig config_;
  int64_t num_labels_ = 0;
  bool training_ = false;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  at::Tensor embed_, final_norm_, lm_head_, score_;
  std::vector<Layer> layers_;
};

std::unique_ptr<Backbone> make_llama(const ModelConfig& config, int64_t num_labels);

// llama2.c run.c's sampler: temperature 0 is argmax; otherwise softmax(logits / T) sampled with
// run.c's xorshift64* generator, restricted to the top-p nucleus when 0 < topp < 1.
class Sampler {
 public:
  Sampler(float temperature, float topp, uint64_t seed)
      : temperature_(temperature), topp_(topp), state_(seed) {}
  int64_t sample(const at::Tensor& logits);  // logits [vocab]
  float random_f32();

 private:
  uint32_t random_u32();
  float temperature_, topp_;
  uint64_t state_;
};

struct GenerateOptions {
  int64_t steps = 256;  // positions run, prompt included (run.c's `steps`), capped at max_seq_len
  float temperature = 1.0f;
  float topp = 0.9f;
  uint64_t seed = 0;
  int64_t stop_token = 1;  // run.c stops when BOS is sampled
};

// run.c's generate loop over prompt ids (BOS first): the prompt is forced, later tokens sampled.
// `on_token(prev, next)` sees each token as it is produced (prompt tokens included, as run.c prints
// them). Returns every token after the first, prompt continuation included.
std::vector<int64_t> generate(LlamaBackbone& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int64_t prev, int64_t next)>& on_token = {});

}  // namespace dt::model
