// model/t5.cpp — T5 encoder–decoder, following HF's modeling_t5 op for op (golden-tested against an
// independent torch implementation, scripts/make_t5_bert_golden.py).
//
// Every parameter is read through hooks().weight(name, W) at use, and every site of hooks.h is
// consulted, so methods (LoRA, FISH, adapters, prefix/prompt tuning) need nothing from this file.
#include "model/t5.h"
#include "model/cpu_bf16_linear.h"
#include "model/module_tree.h"

#include <torch/torch.h>

#include <cmath>
#include <map>

#include "util/error.h"

namespace dt::model {

namespace {

constexpr double kDropout = 0.1;     // T5's dropout_rate; active only in training
constexpr double kMaskValue = -1e9;  // additive mask; softmax runs in fp32

// HF T5Attention._relative_position_bucket: exact buckets for small distances, log-spaced up to
// max_distance; the encoder distinguishes the sign, the decoder only looks back.
at::Tensor relative_position_bucket(at::Tensor relative, bool bidirectional, int64_t num_buckets,
                                    int64_t max_distance) {
  at::Tensor buckets = torch::zeros_like(relative);
  if (bidirectional) {
    num_buckets /= 2;
    buckets = buckets + (relative > 0).to(torch::kLong) * num_buckets;
    relative = relative.abs();
  } else {
    relative = -torch::min(relative, torch::zeros_like(relative));
  }
  const int64_t max_exact = num_buckets / 2;
  const at::Tensor is_small = relative < max_exact;
  at::Tensor large = max_exact + (torch::log(relative.to(torch::kFloat) / max_exact) /
                                  std::log(static_cast<double>(max_distance) / max_exact) *
                                  (num_buckets - max_exact))
                                     .to(torch::kLong);
  large = torch::clamp_max(large, num_buckets - 1);
  return buckets + torch::where(is_small, relative, large);
}

// x W^T with x cast to W's dtype (no-op for float32 weights): a method's float32 output may have
// widened the residual stream of a bf16 model (HF's T5 casts the same way before wo).
// bf16 weights on a CPU without bf16 arithmetic: W upcast block by block (model/cpu_bf16_linear.h).
at::Tensor lin(const at::Tensor& x, const at::Tensor& w) {
  const at::Tensor xw = x.scalar_type() == w.scalar_type() ? x : x.to(w.scalar_type());
  if (w.scalar_type() == torch::kBFloat16 && w.device().is_cpu() && cpu_bf16_linear_blocked()) {
    return blocked_bf16_linear(xw, w);
  }
  return torch::linear(xw, w);
}

}  // namespace

struct T5Backbone::Impl {
  ModelConfig config;
  int64_t num_labels = 0;
  T5Head head = T5Head::LabelWords;
  std::vector<int64_t> label_ids;
  std::shared_ptr<torch::nn::Module> root = std::make_shared<torch::nn::Module>();
  std::map<std::string, at::Tensor> params;
  bool training = false;
  const HookSet* hooks = nullptr;  // set at each forward

  at::Tensor W(const std::string& name) const { return hooks->weight(name, params.at(name)); }
  at::Tensor out(const std::string& site, const at::Tensor& h, const at::Tensor& x) const {
    return hooks->output(site, h, x);
  }
  at::Tensor dropout(const at::Tensor& x) const { return torch::dropout(x, kDropout, training); }

  // T5LayerNorm: RMS norm without mean or bias, variance in fp32.
  at::Tensor norm(const std::string& path, const at::Tensor& x) const {
    const at::Tensor w = W(path + ".weight");
    const at::Tensor var = x.to(torch::kFloat).pow(2).mean(-1, /*keepdim=*/true);
    const at::Tensor h = w * (x * torch::rsqrt(var + config.norm_eps)).to(w.scalar_type());
    return out(path + ".ln", h, x);
  }

  // [1, H, q_len, k_len] learned bias of the bucketed relative positions (block 0 owns the table).
  at::Tensor position_bias(const std::string& attention, int64_t q_len, int64_t k_len, bool bidirectional) const {
    // The device read off the parameter itself: W() would run a weight hook (FISH's scatter) for nothing.
    const auto opts = torch::TensorOptions().dtype(torch::kLong).device(params.at("shared.weight").device());
    const at::Tensor relative = torch::arange(k_len, opts).unsqueeze(0) - torch::arange(q_len, opts).unsqueeze(1);
    const at::Tensor buckets = relative_position_bucket(relative, bidirectional, config.relative_attention_num_buckets,
                                                        config.relative_attention_max_distance);
    const at::Tensor table = W(attention + ".relative_attention_bias.weight");
    return torch::embedding(table, buckets).permute({2, 0, 1}).unsqueeze(0);
  }

  // One T5Attention. `bias` = position bias + additive mask [.., H|1, Tq, Tk]. No 1/sqrt(d) scaling:
  // T5 folds it into the initialization of q.
  at::Tensor attention(const std::string& path, const at::Tensor& x, const at::Tensor& kv,
                       const at::Tensor& bias) const {
    const int64_t B = x.size(0), Tq = x.size(1), Tk = kv.size(1), H = config.num_heads, D = config.d_kv;
    auto project = [&](const char* name, const at::Tensor& in) {
      const std::string site = path + "." + name;
      return out(site, lin(in, W(site + ".weight")), in);
    };
    // In the weights' dtype (a method's float32 output on one projection must not mix dtypes below).
    const auto dtype = params.at(path + ".q.weight").scalar_type();
    auto heads = [&](const at::Tensor& t, int64_t T) {
      return (t.scalar_type() == dtype ? t : t.to(dtype)).view({B, T, H, D}).transpose(1, 2);
    };
    at::Tensor q = heads(project("q", x), Tq);
    at::Tensor k = heads(project("k", kv), Tk);
    at::Tensor v = heads(project("v", kv), Tk);
    at::Tensor scores_bias = bias;
    if (hooks->has_prefix(path)) {
      // Prefix keys are visible to every query and carry no position bias.
      auto [kp, vp] = hooks->prefix(path, B);
      k = torch::cat({kp.to(k.scalar_type()), k}, 2);
      v = torch::cat({vp.to(v.scalar_type()), v}, 2);
      const int64_t P = kp.size(2);
      std::vector<int64_t> pad_shape(bias.sizes().begin(), bias.sizes().end());
      pad_shape.back() = P;
      scores_bias = torch::cat({torch::zeros(pad_shape, bias.options()), bias}, -1);
    }
    at::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) + scores_bias;
    at::Tensor probs = torch::softmax(scores.to(torch::kFloat), -1).to(q.scalar_type());
    probs = dropout(probs);
    const at::Tensor context = torch::matmul(probs, v).transpose(1, 2).reshape({B, Tq, H * D});
    return project("o", context);
  }

  // T5DenseActDense / T5DenseGatedActDense on the normed input n; `resid` is the un-normed stream.
  at::Tensor ffn(const std::string& path, const at::Tensor& n, const at::Tensor& resid) const {
    const at::Tensor in = out(path + ".ffn_in", n, resid);
    at::Tensor inter;
    if (config.gated_ffn) {
      const at::Tensor gate = lin(in, W(path + ".wi_0.weight"));
      const at::Tensor act = config.activation == "gelu_new" ? torch::gelu(gate, "tanh")
                             : config.activation == "gelu" ? torch::gelu(gate)
                                                           : torch::relu(gate);
      inter = act * lin(in, W(path + ".wi_1.weight"));
    } else {
      inter = torch::relu(lin(in, W(path + ".wi.weight")));
    }
    inter = dropout(out(path + ".wi", inter, in));
    const at::Tensor h = dropout(lin(inter, W(path + ".wo.weight")));
    return out(path + ".ffn_out", h, in);
  }

  // Pre-norm sublayer with its residual: h + attn_out(attention(norm(h))).
  at::Tensor attention_layer(const std::string& layer, const std::string& module, const at::Tensor& h,
                             const at::Tensor& kv, const at::Tensor& bias) const {
    const at::Tensor n = norm(layer + ".layer_norm", h);
    const std::string path = layer + "." + module;
    const at::Tensor a = dropout(attention(path, n, kv.defined() ? kv : n, bias));
    return h + out(path + ".attn_out", a, n);
  }

  at::Tensor ffn_layer(const std::string& layer, const at::Tensor& h) const {
    const at::Tensor n = norm(layer + ".layer_norm", h);
    return h + ffn(layer + ".DenseReluDense", n, h);
  }

  at::Tensor block_end(const std::string& block, const at::Tensor& h, const at::Tensor& x) const {
    return out(block + ".block_out", out(block + ".residual", h, x), x);
  }

  // Returns the encoder output (after the final norm) and the additive mask of its keys.
  std::pair<at::Tensor, at::Tensor> encode(const Batch& batch, std::vector<at::Tensor>* hidden) const {
    const at::Tensor& ids = batch.input_ids;
    DT_CHECK(ids.defined() && ids.dim() == 2, "T5: input_ids must be [batch, time]");
    at::Tensor h = torch::embedding(W("shared.weight"), ids);
    h = hooks->input("shared", h);  // prompt tuning prepends soft tokens here
    at::Tensor mask = batch.attention_mask.defined() ? batch.attention_mask : torch::ones_like(ids);
    if (h.size(1) > mask.size(1)) {
      mask = torch::cat({torch::ones({mask.size(0), h.size(1) - mask.size(1)}, mask.options()), mask}, 1);
    }
    const at::Tensor mask_add = ((1 - mask.to(torch::kFloat)) * kMaskValue).view({h.size(0), 1, 1, h.size(1)});
    const at::Tensor bias =
        position_bias("encoder.block.0.layer.0.SelfAttention", h.size(1), h.size(1), /*bidirectional=*/true) +
        mask_add;
    h = dropout(h);
    for (int64_t i = 0; i < config.num_layers; ++i) {
      const std::string block = "encoder.block." + std::to_string(i);
      const at::Tensor x = h;
      h = attention_layer(block + ".layer.0", "SelfAttention", h, {}, bias);
      h = ffn_layer(block + ".layer.1", h);
      h = block_end(block, h, x);
      if (hidden) hidden->push_back(h.to(torch::kFloat));  // float32 for side networks (no-op in fp32)
    }
    return {dropout(norm("encoder.final_layer_norm", h)), mask_add};
  }

  // Decoder logits [B, T', vocab], float32 (the head runs in the weights' dtype).
  at::Tensor decode(const at::Tensor& dec_ids, const at::Tensor& enc, const at::Tensor& enc_mask,
                    std::vector<at::Tensor>* hidden) const {
    const int64_t T = dec_ids.size(1);
    const at::Tensor shared = W("shared.weight");
    at::Tensor h = dropout(torch::embedding(shared, dec_ids));
    const auto floats = torch::TensorOptions().dtype(torch::kFloat).device(shared.device());
    const at::Tensor causal = torch::triu(torch::full({T, T}, kMaskValue, floats), 1).view({1, 1, T, T});
    const at::Tensor self_bias =
        position_bias("decoder.block.0.layer.0.SelfAttention", T, T, /*bidirectional=*/false) + causal;
    for (int64_t i = 0; i < config.num_decoder_layers; ++i) {
      const std::string block = "decoder.block." + std::to_string(i);
      const at::Tensor x = h;
      h = attention_layer(block + ".layer.0", "SelfAttention", h, {}, self_bias);
      h = attention_layer(block + ".layer.1", "EncDecAttention", h, enc, enc_mask);
      h = ffn_layer(block + ".layer.2", h);
      h = block_end(block, h, x);
      if (hidden) hidden->push_back(h.to(torch::kFloat));  // float32 for side networks (no-op in fp32)
    }
    h = dropout(norm("decoder.final_layer_norm", h));
    // v1.0 ties the head to the embedding and rescales, as HF does.
    const at::Tensor logits = config.tie_word_embeddings
                                  ? lin(h * std::pow(static_cast<double>(config.d_model), -0.5), shared)
                                  : lin(h, W("lm_head.weight"));
    const at::Tensor o = out("lm_head", logits, h);
    return o.scalar_type() == torch::kFloat ? o : o.to(torch::kFloat);
  }
};

T5Backbone::T5Backbone(const ModelConfig& config, int64_t num_labels, T5Head head, bool random_init)
    : impl_(std::make_unique<Impl>()) {
  DT_CHECK(config.arch == Arch::T5, "T5Backbone: config '" + config.name + "' is not a T5 config");
  DT_CHECK(num_labels >= 0, "T5Backbone: num_labels must be >= 0");
  impl_->config = config;
  impl_->num_labels = num_labels;
  impl_->head = head;
  torch::NoGradGuard no_grad;
  const auto opts = torch::TensorOptions().dtype(config.dtype);
  const double d = static_cast<double>(config.d_model);
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  // HF T5PreTrainedModel._init_weights (factor 1.0).
  for (const TensorMeta& meta : describe(config)) {
    at::Tensor t = torch::empty(meta.shape, opts);
    const std::string& n = meta.name;
    if (!random_init) {
      // Left as allocated: the loader replaces every tensor (untouched pages cost no memory).
    } else if (ends_with(n, "layer_norm.weight")) {
      t.fill_(1.0);
    } else if (n == "shared.weight" || n == "lm_head.weight") {
      t.normal_(0.0, 1.0);
    } else if (ends_with(n, ".q.weight")) {
      t.normal_(0.0, std::pow(d * config.d_kv, -0.5));
    } else if (ends_with(n, ".o.weight")) {
      t.normal_(0.0, std::pow(static_cast<double>(config.num_heads * config.d_kv), -0.5));
    } else if (ends_with(n, ".wo.weight")) {
      t.normal_(0.0, std::pow(static_cast<double>(config.d_ff), -0.5));
    } else {  // k, v, wi*, relative_attention_bias
      t.normal_(0.0, std::pow(d, -0.5));
    }
    register_dotted(*impl_->root, n, t);
  }
  if (num_labels > 0 && head == T5Head::Classifier) {
    // A trained head: float32 whatever the backbone's dtype.
    const auto head_opts = torch::TensorOptions().dtype(torch::kFloat);
    const at::Tensor w = torch::empty({num_labels, config.d_model}, head_opts).normal_(0.0, std::pow(d, -0.5));
    register_dotted(*impl_->root, "classifier.weight", w);
    register_dotted(*impl_->root, "classifier.bias", torch::zeros({num_labels}, head_opts));
  }
  for (const auto& item : impl_->root->named_parameters()) impl_->params[item.key()] = item.value();
  impl_->root->eval();
}

T5Backbone::~T5Backbone() = default;

const ModelConfig& T5Backbone::config() const { return impl_->config; }

std::vector<std::pair<std::string, at::Tensor>> T5Backbone::named_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : impl_->root->named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

std::vector<SiteInfo> T5Backbone::sites() const { return describe_sites(impl_->config); }

ForwardResult T5Backbone::forward(const Batch& batch, const ForwardOptions& options) {
  Impl& m = *impl_;
  m.hooks = &hooks_;
  hooks_.set_task(batch.task);
  ForwardResult result;
  std::vector<at::Tensor>* hidden = options.return_hidden_states ? &result.hidden_states : nullptr;
  auto [enc, enc_mask] = m.encode(batch, hidden);
  const int64_t B = enc.size(0);

  if (m.num_labels > 0 && m.head == T5Head::Classifier) {
    const at::Tensor keep = (enc_mask.view({B, -1, 1}) == 0).to(enc.scalar_type());
    const at::Tensor pooled = (enc * keep).sum(1) / keep.sum(1).clamp_min(1.0);
    const at::Tensor cw = m.W("classifier.weight");
    task_head_output(torch::linear(m.dropout(pooled).to(cw.scalar_type()), cw, m.W("classifier.bias")), batch, result);
    return result;
  }

  if (m.num_labels > 0) {
    DT_CHECK(static_cast<int64_t>(m.label_ids.size()) == m.num_labels,
             "T5: classification needs one label token id per class (" + std::to_string(m.num_labels) + "), got " +
                 std::to_string(m.label_ids.size()),
             "call T5Backbone::set_label_token_ids with the first token of each label word");
    // One decoder step from the start token (pad = 0).
    const at::Tensor start = torch::zeros({B, 1}, torch::TensorOptions().dtype(torch::kLong).device(enc.device()));
    const at::Tensor step = m.decode(start, enc, enc_mask, hidden).select(1, 0);  // [B, vocab]
    at::Tensor label_tokens = torch::tensor(m.label_ids, torch::TensorOptions().dtype(torch::kLong)).to(enc.device());
    // A multi-task run's label words are every task's, stacked: this batch's task owns a slice of them.
    if (batch.head_size > 0) label_tokens = label_tokens.narrow(0, batch.head_offset, batch.head_size);
    result.logits = step.index_select(1, label_tokens);
    if (batch.labels.defined()) {
      DT_CHECK(!batch.labels.is_floating_point(), "T5 label words classify; a regression task (float labels) has none",
               "train regression tasks (stsb) on a backbone with a classifier head (BERT, Llama)");
      result.loss = torch::cross_entropy_loss(step, label_tokens.index_select(0, batch.labels.view({-1})));
    }
    return result;
  }

  at::Tensor dec_ids = batch.decoder_input_ids;
  if (!dec_ids.defined()) {
    DT_CHECK(batch.labels.defined() && batch.labels.dim() == 2,
             "T5 LM: give decoder_input_ids or labels [batch, time] to shift right");
    dec_ids = torch::zeros_like(batch.labels);
    dec_ids.slice(1, 1) = batch.labels.slice(1, 0, -1);
    dec_ids.masked_fill_(dec_ids == -100, 0);
  }
  result.logits = m.decode(dec_ids, enc, enc_mask, hidden);
  if (batch.labels.defined()) {
    const int64_t V = result.logits.size(-1);
    result.loss = torch::cross_entropy_loss(result.logits.reshape({-1, V}), batch.labels.reshape({-1}),
                                            /*weight=*/{}, at::Reduction::Mean, /*ignore_index=*/-100);
  }
  return result;
}

void T5Backbone::set_training(bool training) {
  impl_->training = training;
  impl_->root->train(training);
}

void T5Backbone::set_label_token_ids(std::vector<int64_t> ids) {
  for (int64_t id : ids) {
    DT_CHECK(id >= 0 && id < impl_->config.vocab_size,
             "T5: label token id " + std::to_string(id) + " is outside the vocabulary");
  }
  impl_->label_ids = std::move(ids);
}

const std::vector<int64_t>& T5Backbone::label_token_ids() const { return impl_->label_ids; }
T5Head T5Backbone::head() const { return impl_->head; }
int64_t T5Backbone::num_labels() const { return impl_->num_labels; }

std::unique_ptr<Backbone> make_t5(const ModelConfig& config, int64_t num_labels) {
  return std::make_unique<T5Backbone>(config, num_labels, T5Head::LabelWords);
}

std::unique_ptr<Backbone> make_t5_uninitialized(const ModelConfig& config, int64_t num_labels) {
  return std::make_unique<T5Backbone>(config, num_labels, T5Head::LabelWords, /*random_init=*/false);
}

}  // namespace dt::model
