// peft/hyperformer — Hyperformer++ (Karimi Mahabadi et al., ACL 2021, "Parameter-efficient Multi-task
// Fine-tuning for Transformers via Shared Hypernetworks"): ONE hypernetwork, conditioned on a task
// embedding, the layer id and the adapter's position, generates the weights of every adapter.
//
// For the adapter at layer l, position k (0: after the FFN, 1: after the self-attention, the reference
// code's block types) and the batch's task t:
//   I      = LayerNorm( W2 · relu( W1 · [z_t ; e_l ; b_k] + c1 ) + c2 )        the task projector, [p]
//   D, d   = view(G_D · I + g_D, [m, d_model]),  G_d · I + g_d                  down weight and bias
//   U, u   = view(G_U · I + g_U, [d_model, m]),  G_u · I + g_u                  up weight and bias
//   γ, β   = G_γ · I + g_γ,  G_β · I + g_β                                      the post layer norm
//   h'     = h + LayerNorm_γ,β( U · act(D · h + d) + u )
// at Houlsby's sites (adapter.h houlsby_sites: after every self-attention and every FFN; one hypernet
// for the whole model, layer ids over all blocks, T5's encoder then decoder). Trainable: the task, layer
// and position embeddings, the projector and the generators — nothing per layer, so the count does not
// grow with depth and only T · task-dim grows with the number of tasks.
//
// Defaults are the reference code's (rabeehk/hyperformer, adapters/adapter_configuration.py
// MetaAdapterConfig and AdapterLayersOneHyperNetController): reduction factor 16 (m = d_model / 16),
// projected task embedding p = 64, projector hidden 128, swish (SiLU) activation, a layer norm after
// the adapter (add_layer_norm_after_adapter) with generated γ, β, eps 1e-6, the projector's LayerNorm
// (unique_hyper_net_layer_norm), linear layers N(0, 1e-2²) with zero biases, embeddings N(0, 1).
// One simplification: the task embedding is learned directly at --hyperformer.task-dim (64) where the
// code draws a 512-dim one and projects it with a second MLP; the concatenation [z ; e ; b] then has
// 3 · task-dim features as in the code. Not identity at step 0 (generated weights are not zero),
// as in the paper.
// Names follow the reference modules: "hyperformer.task_embedding.weight",
// "hyperformer.layer_id_embeddings.weight", "hyperformer.adapters_block_type.weight",
// "hyperformer.task_hypernet.{0,2}.{weight,bias}", "hyperformer.LayerNorm.{weight,bias}",
// "hyperformer.{down,up}_sampler_hyper_net.{weight,bias}_generator.{weight,bias}",
// "hyperformer.post_layernorm_hypernet.{weight,bias}_generator.{weight,bias}".
#include <ATen/ATen.h>

#include <cmath>
#include <memory>

#include "peft/adapter/adapter.h"
#include "peft/method.h"
#include "peft/option_checks.h"
#include "util/error.h"

namespace dt::peft {
namespace {

struct HyperformerOptions {
  int64_t reduction_factor = 16;
  int64_t task_dim = 64;
  int64_t hidden = 128;
  int64_t projected_dim = 64;
  adapter::Activation activation = adapter::Activation::Silu;
  bool post_layer_norm = true;
};

constexpr double kLayerNormEps = 1e-6;

// Layer id and block type of each Houlsby site: the sites come in forward order, a self-attention
// then an FFN per block (T5's cross-attention carries none).
struct SitePlace {
  model::SiteInfo site;
  int64_t layer = 0;
  int64_t block_type = 0;  // 0: feed-forward, 1: self-attention (the reference code's ids)
};

std::vector<SitePlace> site_places(const model::ModelConfig& config) {
  const auto sites = adapter::houlsby_sites(config);
  DT_CHECK(!sites.empty() && sites.size() % 2 == 0,
           "hyperformer: model '" + config.name + "' has no self-attention/FFN site pairs");
  std::vector<SitePlace> out;
  for (size_t i = 0; i < sites.size(); ++i) {
    const bool attention = sites[i].kind == model::SiteKind::AttentionOutput;
    DT_CHECK(attention == (i % 2 == 0), "hyperformer: site '" + sites[i].name +
                                            "' breaks the self-attention, FFN order of the adapter sites");
    DT_CHECK(sites[i].out_features == config.d_model,
             "hyperformer: site '" + sites[i].name + "' has " + std::to_string(sites[i].out_features) +
                 " features, not d_model " + std::to_string(config.d_model) + " (one generator serves every site)");
    out.push_back({sites[i], static_cast<int64_t>(i / 2), attention ? 1 : 0});
  }
  return out;
}

int64_t bottleneck_of(const model::ModelConfig& config, const HyperformerOptions& o) {
  const int64_t m = config.d_model / o.reduction_factor;
  if (m <= 0) {
    throw_usage_error("--hyperformer.reduction-factor " + std::to_string(o.reduction_factor) +
                      " leaves no bottleneck for d_model " + std::to_string(config.d_model));
  }
  return m;
}

class Hyperformer final : public Method {
 public:
  explicit Hyperformer(HyperformerOptions options) : options_(options) {}
  std::string name() const override { return "hyperformer"; }
  void set_tasks(const std::vector<std::string>& names) override { num_tasks_ = static_cast<int64_t>(names.size()); }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    const auto places = site_places(config);
    const int64_t layers = places.back().layer + 1, d = config.d_model, m = bottleneck_of(config, options_);
    const int64_t e = options_.task_dim, h = options_.hidden, p = options_.projected_dim;
    const std::string x = "hyperformer.";
    std::vector<model::TensorMeta> out = {
        {x + "task_embedding.weight", {num_tasks_, e}},
        {x + "layer_id_embeddings.weight", {layers, e}},
        {x + "adapters_block_type.weight", {2, e}},
        {x + "task_hypernet.0.weight", {h, 3 * e}},
        {x + "task_hypernet.0.bias", {h}},
        {x + "task_hypernet.2.weight", {p, h}},
        {x + "task_hypernet.2.bias", {p}},
        {x + "LayerNorm.weight", {p}},
        {x + "LayerNorm.bias", {p}},
    };
    auto generator = [&](const std::string& module, int64_t weight_out, int64_t bias_out) {
      out.push_back({x + module + ".weight_generator.weight", {weight_out, p}});
      out.push_back({x + module + ".weight_generator.bias", {weight_out}});
      out.push_back({x + module + ".bias_generator.weight", {bias_out, p}});
      out.push_back({x + module + ".bias_generator.bias", {bias_out}});
    };
    generator("down_sampler_hyper_net", m * d, m);
    generator("up_sampler_hyper_net", d * m, d);
    if (options_.post_layer_norm) generator("post_layernorm_hypernet", d, d);
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    const model::ModelConfig& config = backbone.config();
    const auto metas = plan(config);
    const auto places = site_places(config);
    const int64_t d = config.d_model, m = bottleneck_of(config, options_), p = options_.projected_dim;

    // The reference code's initializations, drawn in registration order from torch's generator.
    std::vector<at::Tensor> t;
    for (const auto& meta : metas) {
      const std::string& n = meta.name;
      at::Tensor v;
      if (n.find("embedding") != std::string::npos || n.find("block_type") != std::string::npos) {
        v = at::empty(meta.shape, at::kFloat).normal_(0.0, 1.0);  // nn.Embedding
      } else if (n == "hyperformer.LayerNorm.weight") {
        v = at::ones(meta.shape, at::kFloat);
      } else if (meta.shape.size() == 2) {
        v = at::empty(meta.shape, at::kFloat).normal_(0.0, 1e-2);  // linear_layer(std=1e-2)
      } else {
        v = at::zeros(meta.shape, at::kFloat);  // linear biases, LayerNorm.bias
      }
      t.push_back(v.requires_grad_(true));
    }
    // Named views of the tensors, in plan() order.
    const at::Tensor task_emb = t[0], layer_emb = t[1], type_emb = t[2];
    const at::Tensor w1 = t[3], c1 = t[4], w2 = t[5], c2 = t[6], ln_w = t[7], ln_b = t[8];
    const at::Tensor gd_w = t[9], gd_b = t[10], gdb_w = t[11], gdb_b = t[12];
    const at::Tensor gu_w = t[13], gu_b = t[14], gub_w = t[15], gub_b = t[16];
    const bool post = options_.post_layer_norm;
    const at::Tensor gg_w = post ? t[17] : at::Tensor(), gg_b = post ? t[18] : at::Tensor();
    const at::Tensor gbeta_w = post ? t[19] : at::Tensor(), gbeta_b = post ? t[20] : at::Tensor();
    const adapter::Activation act = options_.activation;
    const int64_t num_tasks = num_tasks_;
    const model::HookSet* hooks = &backbone.hooks();

    for (const SitePlace& place : places) {
      const int64_t layer = place.layer, block_type = place.block_type;
      backbone.hooks().add_output(place.site.name, [=](const at::Tensor& h, const at::Tensor&) {
        const int64_t task = hooks->task();
        DT_CHECK(task >= 0 && task < num_tasks, "hyperformer: batch of task " + std::to_string(task) +
                                                    " in a run of " + std::to_string(num_tasks) + " tasks");
        const at::Tensor z = at::cat({task_emb[task], layer_emb[layer], type_emb[block_type]});
        const at::Tensor hidden = at::relu(at::linear(z, w1, c1));
        const at::Tensor embedding = at::layer_norm(at::linear(hidden, w2, c2), {p}, ln_w, ln_b, kLayerNormEps);
        adapter::Bottleneck b;
        b.down_weight = at::linear(embedding, gd_w, gd_b).view({m, d});
        b.down_bias = at::linear(embedding, gdb_w, gdb_b);
        b.up_weight = at::linear(embedding, gu_w, gu_b).view({d, m});
        b.up_bias = at::linear(embedding, gub_w, gub_b);
        if (!post) return h + b.forward(h, act);
        const at::Tensor delta = b.forward(h, act).to(at::kFloat);
        const at::Tensor normed = at::layer_norm(delta, {d}, at::linear(embedding, gg_w, gg_b),
                                                 at::linear(embedding, gbeta_w, gbeta_b), kLayerNormEps);
        return h + normed.to(h.scalar_type());
      });
    }
    std::vector<Trainable> out;
    for (size_t i = 0; i < metas.size(); ++i) out.push_back({metas[i].name, t[i], name()});
    return out;
  }

  std::string describe() const override {
    return "hyperformer(reduction_factor=" + std::to_string(options_.reduction_factor) +
           ",task_dim=" + std::to_string(options_.task_dim) + ",hidden=" + std::to_string(options_.hidden) +
           ",projected_dim=" + std::to_string(options_.projected_dim) +
           ",activation=" + adapter::activation_name(options_.activation) +
           ",layer_norm=" + (options_.post_layer_norm ? "post" : "none") + ")";
  }

 private:
  HyperformerOptions options_;
  int64_t num_tasks_ = 1;
};

}  // namespace

void register_hyperformer(Registry& registry) {
  registry.add({"hyperformer",
                "Hyperformer++: one shared hypernetwork generates every adapter from task, layer and position "
                "embeddings",
                {
                 {"hyperformer.reduction-factor", int64_t{16}, "adapter bottleneck = d_model / N"},
                 {"hyperformer.task-dim", int64_t{64}, "size of the task, layer-id and position embeddings"},
                 {"hyperformer.hidden", int64_t{128}, "hidden size of the task projector MLP"},
                 {"hyperformer.projected-dim", int64_t{64}, "size of the projected embedding the generators read"},
                 {"hyperformer.activation", std::string("silu"), "adapter nonlinearity: relu, gelu, tanh, silu"},
                 {"hyperformer.layer-norm", std::string("post"),
                  "post (a generated layer norm on the adapter's output, as the paper) | none"},
                },
                [](const OptionValues& values) {
                  HyperformerOptions o;
                  o.reduction_factor = positive_option(values, "hyperformer.reduction-factor");
                  o.task_dim = positive_option(values, "hyperformer.task-dim");
                  o.hidden = positive_option(values, "hyperformer.hidden");
                  o.projected_dim = positive_option(values, "hyperformer.projected-dim");
                  o.activation = adapter::parse_activation("hyperformer.activation",
                                                           values.get<std::string>("hyperformer.activation"));
                  const std::string ln = values.get<std::string>("hyperformer.layer-norm");
                  if (ln != "post" && ln != "none") {
                    throw_usage_error("--hyperformer.layer-norm must be post or none, got '" + ln + "'");
                  }
                  o.post_layer_norm = ln == "post";
                  return std::make_unique<Hyperformer>(o);
                }});
}

}  // namespace dt::peft
