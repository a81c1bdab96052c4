// model/llama.cpp — the Llama decoder, its KV-cache step and run.c's sampler (see llama.h).
#include <c10/core/GradMode.h>
#include "model/llama.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "util/error.h"

namespace dt::model {
namespace {

// HF's rotate_half: (x1, x2) -> (-x2, x1) over the two halves of the head dimension.
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos + rotate_half(x) * sin;  // cos/sin [T, D] broadcast over [B, H, T, D]
}

// cos and sin tables [T, D] for `positions` [T]: angle_j = pos / theta^(2j / D), halves repeated.
std::pair<at::Tensor, at::Tensor> rotary_tables(const at::Tensor& positions, int64_t head_dim,
                                                double theta) {
  at::Tensor exponent =
      at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kFloat).device(positions.device())) /
      static_cast<double>(head_dim);
  at::Tensor inv_freq = at::pow(theta, exponent).reciprocal();
  at::Tensor angles = at::outer(positions.to(at::kFloat), inv_freq);
  at::Tensor emb = at::cat({angles, angles}, -1);
  return {emb.cos(), emb.sin()};
}

}  // namespace

// ---- construction -------------------------------------------------------------------------------

at::Tensor LlamaBackbone::add_param(const std::string& name, at::Tensor value) {
  value.requires_grad_(false);
  params_.emplace_back(name, value);
  return value;
}

LlamaBackbone::LlamaBackbone(const ModelConfig& config, int64_t num_labels, bool random_init)
    : config_(config), num_labels_(num_labels) {
  const ModelConfig& c = config_;
  DT_CHECK(c.arch == Arch::Llama, "LlamaBackbone: config '" + c.name + "' is not a Llama config");
  DT_CHECK(c.vocab_size > 0 && c.d_model > 0 && c.d_ff > 0 && c.num_layers > 0 && c.num_heads > 0 &&
               c.num_kv_heads > 0,
           "Llama config '" + c.name + "' has a non-positive size");
  DT_CHECK(c.num_heads * c.d_kv == c.d_model,
           "Llama config '" + c.name + "': num_heads x d_kv != d_model");
  DT_CHECK(c.num_heads % c.num_kv_heads == 0,
           "Llama config '" + c.name + "': num_heads is not a multiple of num_kv_heads");
  DT_CHECK(c.d_kv % 2 == 0, "Llama config '" + c.name + "': rotary needs an even head size");
  DT_CHECK(num_labels >= 0, "num_labels must be >= 0");

  const int64_t d = c.d_model, kv = c.num_kv_heads * c.d_kv;
  auto normal = [random_init](std::vector<int64_t> shape) {
    at::Tensor t = at::empty(shape, at::kFloat);
    return random_init ? t.normal_(0.0, 0.02) : t;
  };
  auto ones = [random_init](int64_t n) {
    return random_init ? at::ones({n}, at::kFloat) : at::empty({n}, at::kFloat);
  };
  embed_ = add_param("model.embed_tokens.weight", normal({c.vocab_size, d}));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    Layer l;
    l.path = "model.layers." + std::to_string(i);
    const std::string p = l.path + ".";
    // HF's registration order: attention, mlp, then the two norms.
    l.wq = add_param(p + "self_attn.q_proj.weight", normal({d, d}));
    l.wk = add_param(p + "self_attn.k_proj.weight", normal({kv, d}));
    l.wv = add_param(p + "self_attn.v_proj.weight", normal({kv, d}));
    l.wo = add_param(p + "self_attn.o_proj.weight", normal({d, d}));
    l.gate = add_param(p + "mlp.gate_proj.weight", normal({c.d_ff, d}));
    l.up = add_param(p + "mlp.up_proj.weight", normal({c.d_ff, d}));
    l.down = add_param(p + "mlp.down_proj.weight", normal({d, c.d_ff}));
    l.input_norm = add_param(p + "input_layernorm.weight", ones(d));
    l.post_norm = add_param(p + "post_attention_layernorm.weight", ones(d));
    layers_.push_back(std::move(l));
  }
  final_norm_ = add_param("model.norm.weight", ones(d));
  if (!c.tie_word_embeddings) lm_head_ = add_param("lm_head.weight", normal({c.vocab_size, d}));
  if (num_labels_ > 0)
    score_ = add_param("score.weight", at::empty({num_labels_, d}, at::kFloat).normal_(0.0, 0.02));
}

std::vector<std::pair<std::string, at::Tensor>> LlamaBackbone::named_parameters() const {
  return params_;
}

std::vector<SiteInfo> LlamaBackbone::sites() const { return describe_sites(config_); }

void LlamaBackbone::set_parameter(const std::string& name, const at::Tensor& value) {
  for (auto& [n, p] : params_) {
    if (n != name) continue;
    DT_CHECK(p.sizes() == value.sizes(),
             "parameter '" + name + "' has shape " + c10::str(p.sizes()) + ", the new value " +
                 c10::str(value.sizes()));
    // set_data swaps the storage under the same tensor object, so every holder (layers_, hooks,
    // optimizers) sees the new data; a float32 CPU value is taken as is, without a copy.
    p.set_data(value.scalar_type() == at::kFloat && value.device().is_cpu()
                   ? value.detach()
                   : value.detach().to(at::kCPU, at::kFloat));
    return;
  }
  DT_FAIL("LlamaBackbone has no parameter named '" + name + "'");
}

// ---- forward ------------------------------------------------------------------------------------

at::Tensor LlamaBackbone::rms_norm(const std::string& path, const at::Tensor& x,
                                   const at::Tensor& w) const {
  at::Tensor inv = at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + config_.norm_eps);
  at::Tensor h = x * inv * weight(path + ".weight", w);
  return hooks_.output(path + ".ln", h, x);
}

at::Tensor LlamaBackbone::layer_forward(size_t index, const at::Tensor& x, const at::Tensor& cos,
                                        const at::Tensor& sin, const at::Tensor& key_mask,
                                        int64_t past, KvCache* cache) const {
  const auto longs = at::TensorOptions().dtype(at::kLong).device(x.device());
  const Layer& l = layers_[index];
  const std::string attn = l.path + ".self_attn", mlp = l.path + ".mlp";
  const int64_t B = x.size(0), T = x.size(1), H = config_.num_heads, KV = config_.num_kv_heads;
  const int64_t D = config_.d_kv;

  // ---- attention
  at::Tensor h = rms_norm(l.path + ".input_layernorm", x, l.input_norm);
  at::Tensor q = hooks_.output(attn + ".q", at::linear(h, weight(attn + ".q_proj.weight", l.wq)), h);
  at::Tensor k = hooks_.output(attn + ".k", at::linear(h, weight(attn + ".k_proj.weight", l.wk)), h);
  at::Tensor v = hooks_.output(attn + ".v", at::linear(h, weight(attn + ".v_proj.weight", l.wv)), h);

  // Prefix keys/values (prefix tuning) come first. As in HF, where they arrive as past_key_values,
  // the real tokens' rotary positions start after them.
  at::Tensor kp, vp;
  int64_t prefix_len = 0;
  if (hooks_.has_prefix(attn)) {
    std::tie(kp, vp) = hooks_.prefix(attn, B);
    DT_CHECK(kp.dim() == 4 && kp.size(0) == B && kp.size(3) == D && kp.sizes() == vp.sizes() &&
                 (kp.size(1) == H || kp.size(1) == KV),
             "prefix hook at '" + attn + "' returned keys of shape " + c10::str(kp.sizes()) +
                 ", expected [" + std::to_string(B) + ", heads, prefix_len, " + std::to_string(D) + "]");
    if (kp.size(1) != H) {
      kp = kp.repeat_interleave(H / KV, 1);
      vp = vp.repeat_interleave(H / KV, 1);
    }
    prefix_len = kp.size(2);
  }
  at::Tensor c = cos, s = sin;
  if (prefix_len > 0) {
    std::tie(c, s) = rotary_tables(at::arange(prefix_len + past, prefix_len + past + T, longs),
                                   D, config_.rope_theta);
  }
  q = apply_rotary(q.view({B, T, H, D}).transpose(1, 2), c, s);
  k = apply_rotary(k.view({B, T, KV, D}).transpose(1, 2), c, s);
  v = v.view({B, T, KV, D}).transpose(1, 2);
  if (cache != nullptr) {
    cache->k[index].narrow(2, past, T).copy_(k);
    cache->v[index].narrow(2, past, T).copy_(v);
    k = cache->k[index].narrow(2, 0, past + T);
    v = cache->v[index].narrow(2, 0, past + T);
  }
  if (H != KV) {  // grouped-query attention: query head h reads kv head h / (H / KV)
    k = k.repeat_interleave(H / KV, 1);
    v = v.repeat_interleave(H / KV, 1);
  }
  if (prefix_len > 0) {
    k = at::cat({kp.to(k.scalar_type()), k}, 2);
    v = at::cat({vp.to(v.scalar_type()), v}, 2);
  }
  const int64_t S = k.size(2);  // prefix + past + T keys
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(D));
  // Masked: future keys (key position > query position) and padding keys; prefix keys never.
  at::Tensor key_pos = at::arange(S - prefix_len, longs);
  at::Tensor query_pos = at::arange(past, past + T, longs);
  at::Tensor masked = key_pos.unsqueeze(0) > query_pos.unsqueeze(1);  // [T, S - prefix]
  masked = masked.view({1, 1, T, S - prefix_len});
  if (key_mask.defined()) masked = masked | key_mask.view({B, 1, 1, S - prefix_len});
  if (prefix_len > 0) {
    masked = at::cat({at::zeros({masked.size(0), 1, T, prefix_len}, longs.dtype(at::kBool)), masked.expand(
                          {masked.size(0), 1, T, S - prefix_len})}, -1);
  }
  // The lowest finite value rather than -inf: a fully masked row (padding query) stays finite.
  scores = scores.masked_fill(masked, std::numeric_limits<float>::lowest());
  at::Tensor ctx = at::matmul(at::softmax(scores, -1), v).transpose(1, 2).reshape({B, T, H * D});
  at::Tensor o = hooks_.output(attn + ".o", at::linear(ctx, weight(attn + ".o_proj.weight", l.wo)), ctx);
  at::Tensor attn_out = hooks_.output(attn + ".attn_out", o, h);
  at::Tensor x1 = x + attn_out;

  // ---- SwiGLU feed-forward
  at::Tensor h2 = rms_norm(l.path + ".post_attention_layernorm", x1, l.post_norm);
  at::Tensor f_in = hooks_.output(mlp + ".ffn_in", h2, x1);
  at::Tensor gate = at::linear(f_in, weight(mlp + ".gate_proj.weight", l.gate));
  at::Tensor up = at::linear(f_in, weight(mlp + ".up_proj.weight", l.up));
  at::Tensor wi = hooks_.output(mlp + ".wi", at::silu(gate) * up, f_in);
  at::Tensor f_out = hooks_.output(mlp + ".ffn_out", at::linear(wi, weight(mlp + ".down_proj.weight", l.down)), f_in);
  at::Tensor x2 = x1 + f_out;

  at::Tensor r = hooks_.output(l.path + ".residual", x2, x);
  return hooks_.output(l.path + ".block_out", r, x);
}

at::Tensor LlamaBackbone::lm_logits(const at::Tensor& hidden) const {
  at::Tensor w = config_.tie_word_embeddings ? weight("model.embed_tokens.weight", embed_)
                                             : weight("lm_head.weight", lm_head_);
  return hooks_.output("lm_head", at::linear(hidden, w), hidden);
}

ForwardResult LlamaBackbone::forward(const Batch& batch, const ForwardOptions& options) {
  DT_CHECK(batch.input_ids.defined() && batch.input_ids.dim() == 2,
           "Llama forward needs input_ids [batch, seq]");
  hooks_.set_task(batch.task);
  const at::Tensor ids = batch.input_ids.to(at::kLong);
  const int64_t B = ids.size(0), T = ids.size(1);
  const auto longs = at::TensorOptions().dtype(at::kLong).device(ids.device());
  at::Tensor mask = batch.attention_mask.defined() ? batch.attention_mask.to(at::kLong)
                                                   : at::ones({B, T}, longs);
  DT_CHECK(mask.sizes() == ids.sizes(), "attention_mask " + c10::str(mask.sizes()) +
                                            " does not match input_ids " + c10::str(ids.sizes()));

  at::Tensor x = at::embedding(weight("model.embed_tokens.weight", embed_), ids);
  x = hooks_.input("model.embed_tokens", x);
  const int64_t prepended = x.size(1) - T;  // soft prompt positions, always attended
  DT_CHECK(prepended >= 0 && x.size(0) == B && x.size(2) == config_.d_model,
           "an input hook at model.embed_tokens returned " + c10::str(x.sizes()) +
               "; input hooks may only prepend positions");
  if (prepended > 0) mask = at::cat({at::ones({B, prepended}, longs), mask}, 1);
  const int64_t total = x.size(1);

  auto [cos, sin] = rotary_tables(at::arange(total, longs), config_.d_kv, config_.rope_theta);
  at::Tensor key_mask = mask.eq(0);
  ForwardResult result;
  for (size_t i = 0; i < layers_.size(); ++i) {
    x = layer_forward(i, x, cos, sin, key_mask, 0, nullptr);
    if (options.return_hidden_states) result.hidden_states.push_back(x);
  }
  x = rms_norm("model.norm", x, final_norm_);

  if (num_labels_ > 0) {
    // HF LlamaForSequenceClassification: the score of each row's last non-padding position.
    at::Tensor last = (mask * at::arange(total, longs)).argmax(1);
    at::Tensor pooled = x.index({at::arange(B, longs), last});
    task_head_output(at::linear(pooled, weight("score.weight", score_)), batch, result);
    return result;
  }
  result.logits = lm_logits(x);
  if (batch.labels.defined()) {
    at::Tensor labels = batch.labels.to(at::kLong);
    DT_CHECK(labels.sizes() == ids.sizes(), "LM labels " + c10::str(labels.sizes()) +
                                                " do not match input_ids " + c10::str(ids.sizes()));
    if (prepended > 0) labels = at::cat({at::full({B, prepended}, -100, longs), labels}, 1);
    // Position t predicts token t + 1.
    at::Tensor logits = result.logits.narrow(1, 0, total - 1).reshape({-1, config_.vocab_size});
    at::Tensor target = labels.narrow(1, 1, total - 1).reshape({-1});
    result.loss = at::cross_entropy_loss(logits, target, {}, at::Reduction::Mean, -100);
  }
  return result;
}

// ---- generation ---------------------------------------------------------------------------------

KvCache LlamaBackbone::new_cache(int64_t batch, int64_t capacity) const {
  KvCache cache;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto floats = at::TensorOptions().dtype(at::kFloat).device(embed_.device());
    cache.k.push_back(at::zeros({batch, config_.num_kv_heads, capacity, config_.d_kv}, floats));
    cache.v.push_back(at::zeros({batch, config_.num_kv_heads, capacity, config_.d_kv}, floats));
  }
  return cache;
}

at::Tensor LlamaBackbone::forward_step(const at::Tensor& ids, KvCache& cache) {
  c10::NoGradGuard no_grad;
  DT_CHECK(ids.dim() == 2, "forward_step needs ids [batch, new tokens]");
  const int64_t past = cache.length;
  at::Tensor x = at::embedding(weight("model.embed_tokens.weight", embed_), ids.to(embed_.device(), at::kLong));
  // A soft prompt goes in front of the sequence once, when the cache is empty.
  if (past == 0) x = hooks_.input("model.embed_tokens", x);
  const int64_t T = x.size(1);
  DT_CHECK(!cache.k.empty() && cache.k.front().size(0) == ids.size(0),
           "forward_step: the cache was made for another batch size");
  DT_CHECK(past + T <= cache.capacity(),
           "forward_step: " + std::to_string(past + T) + " positions exceed the cache capacity " +
               std::to_string(cache.capacity()));
  auto [cos, sin] =
      rotary_tables(at::arange(past, past + T, at::TensorOptions().dtype(at::kLong).device(x.device())),
                    config_.d_kv, config_.rope_theta);
  for (size_t i = 0; i < layers_.size(); ++i) x = layer_forward(i, x, cos, sin, {}, past, &cache);
  cache.length = past + T;
  return lm_logits(rms_norm("model.norm", x, final_norm_));
}

std::unique_ptr<Backbone> make_llama(const ModelConfig& config, int64_t num_labels) {
  return std::make_unique<LlamaBackbone>(config, num_labels);
}

// ---- sampling (llama2.c run.c) -----------------------------------------------------------------

uint32_t Sampler::random_u32() {
  // xorshift64*; a zero state would stay zero forever, so seed 0 means a fixed odd constant.
  if (state_ == 0) state_ = 0x9E3779B97F4A7C15ull;
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return static_cast<uint32_t>((state_ * 0x2545F4914F6CDD1Dull) >> 32);
}

float Sampler::random_f32() { return static_cast<float>(random_u32() >> 8) / 16777216.0f; }

int64_t Sampler::sample(const at::Tensor& logits_in) {
  at::Tensor logits = logits_in.detach().to(at::kCPU, at::kFloat).contiguous();
  const float* l = logits.data_ptr<float>();
  const int64_t n = logits.numel();
  DT_CHECK(n > 0, "Sampler: empty logits");
  if (temperature_ == 0.0f) {  // first maximum, as run.c's argmax
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i)
      if (l[i] > l[best]) best = i;
    return best;
  }
  // run.c's softmax in float, so a seed picks the same tokens as llama2.c.
  std::vector<float> p(l, l + n);
  for (float& v : p) v /= temperature_;
  const float max = *std::max_element(p.begin(), p.end());
  float sum = 0.0f;
  for (float& v : p) {
    v = std::exp(v - max);
    sum += v;
  }
  for (float& v : p) v /= sum;
  const float coin = random_f32();
  if (topp_ <= 0.0f || topp_ >= 1.0f) {
    float cdf = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      cdf += p[i];
      if (coin < cdf) return i;
    }
    return n - 1;
  }
  // Top-p: tokens below (1 - topp) / (n - 1) cannot be in the nucleus, so they are dropped first.
  const float cutoff = (1.0f - topp_) / static_cast<float>(n - 1);
  std::vector<std::pair<float, int64_t>> cand;
  for (int64_t i = 0; i < n; ++i)
    if (p[i] >= cutoff) cand.emplace_back(p[i], i);
  std::stable_sort(cand.begin(), cand.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  float cumulative = 0.0f;
  size_t last = cand.size() - 1;
  for (size_t i = 0; i < cand.size(); ++i) {
    cumulative += cand[i].first;
    if (cumulative > topp_) {
      last = i;
      break;
    }
  }
  const float r = coin * cumulative;
  float cdf = 0.0f;
  for (size_t i = 0; i <= last; ++i) {
    cdf += cand[i].first;
    if (r < cdf) return cand[i].second;
  }
  return cand[last].second;
}

std::vector<int64_t> generate(LlamaBackbone& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int64_t, int64_t)>& on_token) {
  DT_CHECK(!prompt.empty(), "generate: the prompt needs at least one token (BOS)");
  const int64_t max_len = model.config().max_seq_len;
  const int64_t steps = options.steps <= 0 || options.steps > max_len ? max_len : options.steps;
  Sampler sampler(options.temperature, options.topp, options.seed);
  KvCache cache = model.new_cache(1, steps);
  std::vector<int64_t> out;
  int64_t token = prompt[0];
  for (int64_t pos = 0; pos < steps; ++pos) {
    at::Tensor logits = model.forward_step(at::full({1, 1}, token, at::kLong), cache);
    const bool in_prompt = pos + 1 < static_cast<int64_t>(prompt.size());
    const int64_t next = in_prompt ? prompt[pos + 1] : sampler.sample(logits[0][-1]);
    if (next == options.stop_token) break;
    if (on_token) on_token(token, next);
    out.push_back(next);
    token = next;
  }
  return out;
}

}  // namespace dt::model
