// peft/hyperprompt — HyperPrompt (He et al., ICML 2022, "HyperPrompt: Prompt-based Task-Conditioning of
// Transformers"), the HyperPrompt-Global variant: a hypernetwork generates task-conditioned prompts
// that are prepended to the keys and values of every self-attention.
//
// For the self-attention m (T5: every encoder and every decoder self-attention, not the
// cross-attention; BERT: the encoder's; Llama: the decoder's, with the GQA kv heads) and the batch's
// task τ (HookSet::task(), an index into the run's --task list):
//   I      = W2 · relu( W1 · [k_τ ; z_m] + c1 ) + c2          layer-aware task embedding (§3.3), [t]
//   D      = view( G_D · I + g_D, [b, d] )                     the local down projection, generated
//   U      = view( G_U · I + g_U, [kv, b] )                    the local up projection, generated
//   P_K    = view( U · relu( D · P_τ ), [l, kv_heads, head_dim] )   the hyper-prompt for the keys
// and the same with a second pair of generators for the values (P_V). P_τ [l, d] is task τ's global
// prompt (§3.2), k_τ the task embedding, z_m the layer embedding. The hyper-prompts are visible to every
// query (no causal or padding mask, no position bias or rotary), as prefix tuning's keys are.
// One pair of global hypernetworks (H_k, H_v) serves the whole model — T5's encoder and decoder alike,
// the layer embeddings running over all self-attentions (encoder first) — so the count does not grow
// with depth beyond one t'-vector per layer, and with the tasks only by T · (t' + l · d).
//
// Defaults. No official code of HyperPrompt is public (the paper used Mesh TensorFlow), so the shapes
// follow the paper's §3 exactly and the sizes are:
//   --hyperprompt.length 16, --hyperprompt.bottleneck 16: prompt length l and local bottleneck b, our
//     choice (the paper's text was not at hand); with them 8 GLUE tasks on T5 v1.1-XXL add 17.6M
//     parameters, ≈0.16% of the backbone — the order of the abstract's "as few as 0.14%".
//   --hyperprompt.task-dim 64, --hyperprompt.hidden 128, --hyperprompt.projected-dim 64: t', the
//     projector's hidden size and t — HyperFormer++'s task projector with learned task embeddings
//     (its code's ParametricMetaAdapterConfig: task_embedding_dim 64, hidden_dim 128,
//     projected_task_embedding_dim 64), the projector HyperPrompt-Global's layer-aware embedding follows.
// Simplifications: the paper trains the backbone together with the hyper-prompts; here the backbone
// stays frozen, as under every method of deltatune. HyperPrompt-Share / -Sep (per-layer local
// hypernetworks) are not offered: -Global is the paper's best variant and the one that shares across
// tasks and layers.
// Initialization (none at hand from the paper): embeddings N(0, 1) and global prompts N(0, 1) (nn.Embedding);
// the projector nn.Linear's U(±1/sqrt(fan_in)); the generators' biases are the local layers' own
// nn.Linear init (D: U(±1/sqrt(d)), U: U(±1/sqrt(b))), so the generated networks start at a standard
// init, and their weights N(0, 1e-2²) (HyperFormer++'s generators), so task and layer conditioning
// starts as a perturbation of it. Not identity at initialization: the prompts change every attention.
// Trainables (plan() order): "hyperprompt.task_embedding.weight" [T, t'],
// "hyperprompt.layer_embedding.weight" [M, t'], "hyperprompt.task_projector.{0,2}.{weight,bias}",
// "hyperprompt.global_prompt.<task>" [l, d] per task, then for key and value
// "hyperprompt.{key,value}_hypernet.{down,up}_generator.{weight,bias}" ([b·d, t], [b·d], [kv·b, t], [kv·b]).
#include <ATen/ATen.h>

#include <cmath>
#include <memory>

#include "peft/adapter/adapter.h"
#include "peft/method.h"
#include "peft/option_checks.h"
#include "util/error.h"

namespace dt::peft {
namespace {

struct HyperPromptOptions {
  int64_t length = 16;
  int64_t bottleneck = 16;
  int64_t task_dim = 64;
  int64_t hidden = 128;
  int64_t projected_dim = 64;
};

// Every self-attention the hyper-prompts go to, in forward order, with its key/value layout.
struct PromptedAttention {
  std::string path;  // the prefix-hook name
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

std::vector<PromptedAttention> self_attentions(const model::ModelConfig& config) {
  std::vector<PromptedAttention> out;
  for (const auto& g : adapter::prefix_groups(config)) {
    if (g.name == "cross") continue;  // the paper conditions self-attention only
    for (const auto& a : g.attentions) out.push_back({a, g.kv_heads, g.head_dim});
  }
  DT_CHECK(!out.empty(), "hyperprompt: model '" + config.name + "' has no self-attention");
  for (const auto& a : out) {
    // One generator pair serves every layer, so every layer's keys must have the same width.
    DT_CHECK(a.kv_heads * a.head_dim == out[0].kv_heads * out[0].head_dim,
             "hyperprompt: self-attention '" + a.path + "' has keys of another width than '" + out[0].path + "'");
  }
  return out;
}

class HyperPrompt final : public Method {
 public:
  explicit HyperPrompt(HyperPromptOptions options) : options_(options) {}
  std::string name() const override { return "hyperprompt"; }
  void set_tasks(const std::vector<std::string>& names) override { tasks_ = names; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    const auto attentions = self_attentions(config);
    const int64_t T = static_cast<int64_t>(tasks_.size()), M = static_cast<int64_t>(attentions.size());
    const int64_t d = config.d_model, kv = attentions[0].kv_heads * attentions[0].head_dim;
    const int64_t l = options_.length, b = options_.bottleneck, e = options_.task_dim, h = options_.hidden,
                  t = options_.projected_dim;
    const std::string x = "hyperprompt.";
    std::vector<model::TensorMeta> out = {
        {x + "task_embedding.weight", {T, e}},
        {x + "layer_embedding.weight", {M, e}},
        {x + "task_projector.0.weight", {h, 2 * e}},
        {x + "task_projector.0.bias", {h}},
        {x + "task_projector.2.weight", {t, h}},
        {x + "task_projector.2.bias", {t}},
    };
    for (const auto& task : tasks_) out.push_back({x + "global_prompt." + task, {l, d}});
    for (const std::string kind : {"key", "value"}) {
      const std::string module = x + kind + "_hypernet.";
      out.push_back({module + "down_generator.weight", {b * d, t}});
      out.push_back({module + "down_generator.bias", {b * d}});
      out.push_back({module + "up_generator.weight", {kv * b, t}});
      out.push_back({module + "up_generator.bias", {kv * b}});
    }
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    const model::ModelConfig& config = backbone.config();
    const auto metas = plan(config);
    const auto attentions = self_attentions(config);
    const int64_t num_tasks = static_cast<int64_t>(tasks_.size());
    const int64_t d = config.d_model, kv = attentions[0].kv_heads * attentions[0].head_dim;
    const int64_t l = options_.length, b = options_.bottleneck;

    // Drawn in plan() order from torch's generator (the note on top says why each).
    auto uniform = [](const std::vector<int64_t>& shape, int64_t fan_in) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
      return at::empty(shape, at::kFloat).uniform_(-bound, bound);
    };
    std::vector<at::Tensor> t;
    for (const auto& meta : metas) {
      const std::string& n = meta.name;
      at::Tensor v;
      if (n.find("embedding") != std::string::npos || n.find("global_prompt") != std::string::npos) {
        v = at::empty(meta.shape, at::kFloat).normal_(0.0, 1.0);
      } else if (n.find("task_projector.0") != std::string::npos) {
        v = uniform(meta.shape, 2 * options_.task_dim);
      } else if (n.find("task_projector.2") != std::string::npos) {
        v = uniform(meta.shape, options_.hidden);
      } else if (meta.shape.size() == 2) {
        v = at::empty(meta.shape, at::kFloat).normal_(0.0, 1e-2);  // a generator's weight
      } else if (n.find("down_generator") != std::string::npos) {
        v = uniform(meta.shape, d);  // the generated D's base: nn.Linear(d, b)'s init
      } else {
        v = uniform(meta.shape, b);  // the generated U's base: nn.Linear(b, kv)'s init
      }
      t.push_back(v.requires_grad_(true));
    }
    // Named views of the tensors, in plan() order.
    const at::Tensor task_emb = t[0], layer_emb = t[1], w1 = t[2], c1 = t[3], w2 = t[4], c2 = t[5];
    const std::vector<at::Tensor> global_prompts(t.begin() + 6, t.begin() + 6 + num_tasks);
    const size_t g = 6 + static_cast<size_t>(num_tasks);
    const at::Tensor key_down_w = t[g], key_down_b = t[g + 1], key_up_w = t[g + 2], key_up_b = t[g + 3];
    const at::Tensor value_down_w = t[g + 4], value_down_b = t[g + 5], value_up_w = t[g + 6],
                     value_up_b = t[g + 7];
    const model::HookSet* hooks = &backbone.hooks();

    for (size_t m = 0; m < attentions.size(); ++m) {
      const int64_t layer = static_cast<int64_t>(m), H = attentions[m].kv_heads, D = attentions[m].head_dim;
      backbone.hooks().set_prefix(attentions[m].path, [=](int64_t batch) {
        const int64_t task = hooks->task();
        DT_CHECK(task >= 0 && task < num_tasks, "hyperprompt: batch of task " + std::to_string(task) +
                                                    " in a run of " + std::to_string(num_tasks) + " tasks");
        const at::Tensor embedding =
            at::linear(at::relu(at::linear(at::cat({task_emb[task], layer_emb[layer]}), w1, c1)), w2, c2);
        const at::Tensor& prompt = global_prompts[task];
        // The local hypernetwork h(P) = U · relu(D · P), its D and U generated from the embedding.
        auto hyper_prompt = [&](const at::Tensor& down_w, const at::Tensor& down_b, const at::Tensor& up_w,
                                const at::Tensor& up_b) {
          const at::Tensor down = at::linear(embedding, down_w, down_b).view({b, d});
          const at::Tensor up = at::linear(embedding, up_w, up_b).view({kv, b});
          return at::linear(at::relu(at::linear(prompt, down)), up)  // [l, kv]
              .view({l, H, D})
              .permute({1, 0, 2})  // [H, l, D]
              .unsqueeze(0)
              .expand({batch, H, l, D});
        };
        return std::make_pair(hyper_prompt(key_down_w, key_down_b, key_up_w, key_up_b),
                              hyper_prompt(value_down_w, value_down_b, value_up_w, value_up_b));
      });
    }
    std::vector<Trainable> out;
    for (size_t i = 0; i < metas.size(); ++i) out.push_back({metas[i].name, t[i], name()});
    return out;
  }

  std::string describe() const override {
    return "hyperprompt(length=" + std::to_string(options_.length) +
           ",bottleneck=" + std::to_string(options_.bottleneck) + ",task_dim=" + std::to_string(options_.task_dim) +
           ",hidden=" + std::to_string(options_.hidden) +
           ",projected_dim=" + std::to_string(options_.projected_dim) + ")";
  }

 private:
  HyperPromptOptions options_;
  std::vector<std::string> tasks_ = {"default"};
};

}  // namespace

void register_hyperprompt(Registry& registry) {
  registry.add({"hyperprompt",
                "HyperPrompt-Global: a hypernetwork generates task-conditioned prompts for the keys and values of "
                "every self-attention",
                {
                 {"hyperprompt.length", int64_t{16}, "hyper-prompt length l (keys/values prepended per attention)"},
                 {"hyperprompt.bottleneck", int64_t{16}, "bottleneck b of the generated local hypernetworks"},
                 {"hyperprompt.task-dim", int64_t{64}, "size t' of the task and layer embeddings"},
                 {"hyperprompt.hidden", int64_t{128}, "hidden size of the task projector MLP"},
                 {"hyperprompt.projected-dim", int64_t{64},
                  "size t of the layer-aware task embedding the generators read"},
                },
                [](const OptionValues& values) {
                  HyperPromptOptions o;
                  o.length = positive_option(values, "hyperprompt.length");
                  o.bottleneck = positive_option(values, "hyperprompt.bottleneck");
                  o.task_dim = positive_option(values, "hyperprompt.task-dim");
                  o.hidden = positive_option(values, "hyperprompt.hidden");
                  o.projected_dim = positive_option(values, "hyperprompt.projected-dim");
                  return std::make_unique<HyperPrompt>(o);
                }});
}

}  // namespace dt::peft
