// model/bert.cpp — BERT encoder following HF's modeling_bert op for op (golden-tested against an
// independent torch implementation, scripts/make_t5_bert_golden.py).
#include "model/bert.h"
#include "model/module_tree.h"

#include <torch/torch.h>

#include <cmath>
#include <map>

#include "util/error.h"

namespace dt::model {

namespace {

constexpr double kDropout = 0.1;  // hidden and attention dropout of bert-base
constexpr double kMaskValue = -1e9;

}  // namespace

struct BertBackbone::Impl {
  ModelConfig config;
  int64_t num_labels = 0;
  std::shared_ptr<torch::nn::Module> root = std::make_shared<torch::nn::Module>();
  std::map<std::string, at::Tensor> params;
  bool training = false;
  const HookSet* hooks = nullptr;  // set at each forward

  at::Tensor W(const std::string& name) const { return hooks->weight(name, params.at(name)); }
  at::Tensor out(const std::string& site, const at::Tensor& h, const at::Tensor& x) const {
    return hooks->output(site, h, x);
  }
  at::Tensor dropout(const at::Tensor& x) const { return torch::dropout(x, kDropout, training); }
  at::Tensor linear(const std::string& path, const at::Tensor& x) const {
    return torch::linear(x, W(path + ".weight"), W(path + ".bias"));
  }
  at::Tensor layer_norm(const std::string& path, const at::Tensor& x) const {
    const at::Tensor h =
        torch::layer_norm(x, {config.d_model}, W(path + ".weight"), W(path + ".bias"), config.norm_eps);
    return out(path + ".ln", h, x);
  }

  // BertSelfAttention + BertSelfOutput's dense: the attention output before dropout and residual.
  at::Tensor attention(const std::string& layer, const at::Tensor& x, const at::Tensor& mask_add) const {
    const int64_t B = x.size(0), T = x.size(1), H = config.num_heads, D = config.d_kv;
    const std::string self = layer + ".attention.self";
    auto project = [&](const char* site, const char* module) {
      return out(self + "." + site, linear(self + "." + module, x), x).view({B, T, H, D}).transpose(1, 2);
    };
    const at::Tensor q = project("q", "query");
    at::Tensor k = project("k", "key");
    at::Tensor v = project("v", "value");
    at::Tensor bias = mask_add;
    if (hooks->has_prefix(self)) {
      auto [kp, vp] = hooks->prefix(self, B);
      k = torch::cat({kp.to(k.scalar_type()), k}, 2);
      v = torch::cat({vp.to(v.scalar_type()), v}, 2);
      bias = torch::cat({torch::zeros({B, 1, 1, kp.size(2)}, mask_add.options()), mask_add}, -1);
    }
    const at::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(D)) + bias;
    const at::Tensor probs = dropout(torch::softmax(scores.to(torch::kFloat), -1).to(q.scalar_type()));
    const at::Tensor context = torch::matmul(probs, v).transpose(1, 2).reshape({B, T, H * D});
    const std::string output = layer + ".attention.output";
    return out(output + ".o", linear(output + ".dense", context), context);
  }
};

BertBackbone::BertBackbone(const ModelConfig& config, int64_t num_labels) : impl_(std::make_unique<Impl>()) {
  DT_CHECK(config.arch == Arch::Bert, "BertBackbone: config '" + config.name + "' is not a BERT config");
  DT_CHECK(num_labels >= 0, "BertBackbone: num_labels must be >= 0");
  impl_->config = config;
  impl_->num_labels = num_labels;
  torch::NoGradGuard no_grad;
  const auto opts = torch::TensorOptions().dtype(config.dtype);
  // HF BertPreTrainedModel._init_weights: N(0, 0.02) weights and embeddings, zero biases, unit norms.
  auto init = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const bool norm = name.find("LayerNorm") != std::string::npos;
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    at::Tensor t = bias ? torch::zeros(shape, opts)
                   : norm ? torch::ones(shape, opts)
                          : torch::empty(shape, opts).normal_(0.0, 0.02);
    register_dotted(*impl_->root, name, t);
  };
  for (const TensorMeta& meta : describe(config)) init(meta.name, meta.shape);
  if (num_labels > 0) {
    init("classifier.weight", {num_labels, config.d_model});
    init("classifier.bias", {num_labels});
  }
  for (const auto& item : impl_->root->named_parameters()) impl_->params[item.key()] = item.value();
  impl_->root->eval();
}

BertBackbone::~BertBackbone() = default;

const ModelConfig& BertBackbone::config() const { return impl_->config; }
int64_t BertBackbone::num_labels() const { return impl_->num_labels; }

std::vector<std::pair<std::string, at::Tensor>> BertBackbone::named_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : impl_->root->named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

std::vector<SiteInfo> BertBackbone::sites() const { return describe_sites(impl_->config); }

ForwardResult BertBackbone::forward(const Batch& batch, const ForwardOptions& options) {
  Impl& m = *impl_;
  m.hooks = &hooks_;
  hooks_.set_task(batch.task);
  const ModelConfig& c = m.config;
  const at::Tensor& ids = batch.input_ids;
  DT_CHECK(ids.defined() && ids.dim() == 2, "BERT: input_ids must be [batch, time]");
  ForwardResult result;

  // ---- embeddings (prompt tuning prepends soft tokens to the word embeddings)
  at::Tensor h = m.hooks->input("embeddings",
                                torch::embedding(m.W("embeddings.word_embeddings.weight"), ids));
  const int64_t B = h.size(0), T = h.size(1);
  DT_CHECK(T <= c.max_position_embeddings, "BERT: sequence of " + std::to_string(T) + " tokens exceeds " +
                                               std::to_string(c.max_position_embeddings) + " positions");
  at::Tensor mask = batch.attention_mask.defined() ? batch.attention_mask : torch::ones_like(ids);
  if (T > mask.size(1)) mask = torch::cat({torch::ones({B, T - mask.size(1)}, mask.options()), mask}, 1);
  const at::Tensor mask_add = ((1 - mask.to(torch::kFloat)) * kMaskValue).view({B, 1, 1, T});
  // Token types: segment B of a sentence pair is type 1 (batch.token_type_ids); soft prompt tokens,
  // prepended by an input hook, and single sentences are type 0.
  const at::Tensor& type_table = m.W("embeddings.token_type_embeddings.weight");
  at::Tensor types_emb = type_table[0];
  if (batch.token_type_ids.defined()) {
    DT_CHECK(batch.token_type_ids.sizes() == ids.sizes(), "BERT: token_type_ids " + c10::str(batch.token_type_ids.sizes()) +
                                                              " do not match input_ids " + c10::str(ids.sizes()));
    at::Tensor types = batch.token_type_ids.to(torch::kLong);
    if (T > types.size(1)) types = torch::cat({torch::zeros({B, T - types.size(1)}, types.options()), types}, 1);
    types_emb = torch::embedding(type_table, types);
  }
  h = h + m.W("embeddings.position_embeddings.weight").slice(0, 0, T).unsqueeze(0) + types_emb;
  h = m.dropout(m.layer_norm("embeddings.LayerNorm", h));

  // ---- post-LN encoder layers
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string l = "encoder.layer." + std::to_string(i);
    const at::Tensor x = h;
    const at::Tensor a = m.out(l + ".attention.output.attn_out", m.dropout(m.attention(l, h, mask_add)), h);
    h = m.layer_norm(l + ".attention.output.LayerNorm", x + a);
    const at::Tensor in = m.out(l + ".ffn_in", h, h);
    const at::Tensor inter = m.out(l + ".wi", torch::gelu(m.linear(l + ".intermediate.dense", in)), in);
    const at::Tensor f = m.out(l + ".ffn_out", m.dropout(m.linear(l + ".output.dense", inter)), in);
    h = m.out(l + ".residual", h + f, x);
    h = m.out(l + ".block_out", m.layer_norm(l + ".output.LayerNorm", h), x);
    if (options.return_hidden_states) result.hidden_states.push_back(h);
  }

  // ---- pooler and head
  const at::Tensor pooled = torch::tanh(m.linear("pooler.dense", h.select(1, 0)));
  if (m.num_labels == 0) {
    result.logits = pooled;
    return result;
  }
  task_head_output(m.linear("classifier", m.dropout(pooled)), batch, result);
  return result;
}

void BertBackbone::set_training(bool training) {
  impl_->training = training;
  impl_->root->train(training);
}

std::unique_ptr<Backbone> make_bert(const ModelConfig& config, int64_t num_labels) {
  return std::make_unique<BertBackbone>(config, num_labels);
}

}  // namespace dt::model
