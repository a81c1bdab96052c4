// peft/ia3 — (IA)³ (Liu et al., 2022): learned vectors that rescale the keys (".k") and values
// (".v") of every attention — T5's cross-attention included, as in the paper's T0 — and the FFN's
// intermediate activation (".wi", after the activation; for gated FFNs, after act(gate) · up).
//
// h' = h ⊙ l, l initialized to ones, so the model is unchanged at step 0. On t5-base that is
// 12 · (2·768 + 3072) + 12 · (4·768 + 3072) = 129,024 values. Trainables: "<site>.ia3_l" [features].
//
// Merging (HF PEFT's IA3 merge) folds every l into a linear weight, exactly on every backbone here:
//   * k, v: the site's output is the projection's output x·Wᵀ (+ b for BERT), and rotary (Llama) or
//     the head split come after the site, so h ⊙ l == x·(diag(l)·W)ᵀ + b ⊙ l: rows of W (and b) scale.
//   * FFN intermediate: the only consumer of the activation a is the FFN's output linear (T5 wo,
//     BERT output.dense, Llama down_proj), with at most dropout between — elementwise, so it commutes
//     with ⊙ l: (a ⊙ l)·Woᵀ == a·(Wo·diag(l))ᵀ: columns of Wo scale (its bias is untouched). Folding
//     into wi instead would be wrong: l sits after the activation. This is where HF PEFT puts (IA)³
//     for feed-forward modules (ia3_l multiplies wo's input).
// A weight hook of another method on a weight ia3 folds into (LoRA on wo, FISH, DSEE) computes
// (W + Δ)·diag(l): Δ must be merged first, so such methods must come before ia3 in --method; merge()
// refuses otherwise. unmerge() divides by l again (equal within fp rounding; l must have no zeros).
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>

#include <map>
#include <memory>

#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

std::vector<model::SiteInfo> ia3_sites(const model::ModelConfig& config) {
  std::vector<model::SiteInfo> out;
  for (const auto& s : model::describe_sites(config)) {
    const std::string suffix = s.name.substr(s.name.rfind('.') + 1);
    const bool key_or_value = s.kind == model::SiteKind::Projection && (suffix == "k" || suffix == "v");
    if (key_or_value || s.kind == model::SiteKind::FfnIntermediate) out.push_back(s);
  }
  return out;
}

// The path of a site: its name without the suffix (".wi", ".ffn_out", ...).
std::string site_path(const std::string& site) { return site.substr(0, site.rfind('.')); }

class Ia3 final : public Method {
 public:
  std::string name() const override { return "ia3"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    std::vector<model::TensorMeta> out;
    for (const auto& s : ia3_sites(config)) out.push_back({s.name + ".ia3_l", {s.out_features}});
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    // The FFN output linear of each FFN path, for folding the intermediate's l into its columns.
    std::map<std::string, std::string> ffn_output_weight;
    for (const auto& s : model::describe_sites(backbone.config())) {
      if (s.kind == model::SiteKind::FfnOutput) ffn_output_weight[site_path(s.name)] = s.weight;
    }
    folds_.clear();
    *merged_ = false;
    std::shared_ptr<const bool> merged = merged_;
    std::vector<Trainable> out;
    for (const auto& s : ia3_sites(backbone.config())) {
      at::Tensor l = at::ones({s.out_features}, at::kFloat).requires_grad_(true);
      backbone.hooks().add_output(s.name, [l, merged](const at::Tensor& h, const at::Tensor&) {
        if (*merged) return h;
        return h * l.to(h.scalar_type());
      });
      if (s.kind == model::SiteKind::FfnIntermediate) {
        folds_.push_back({ffn_output_weight.at(site_path(s.name)), "", /*rows=*/false, l});
      } else {
        const std::string module = s.weight.substr(0, s.weight.rfind(".weight"));
        folds_.push_back({s.weight, module + ".bias", /*rows=*/true, l});
      }
      out.push_back({s.name + ".ia3_l", l, "ia3"});
    }
    return out;
  }

  bool can_merge() const override { return true; }

  void merge(model::Backbone& backbone) override {
    DT_CHECK(!*merged_, "ia3: merge() called twice without unmerge()");
    c10::NoGradGuard no_grad;
    const auto params = parameters(backbone);
    for (const auto& f : folds_) {
      const at::Tensor& w = params.at(f.weight);
      const at::Tensor effective = backbone.hooks().weight(f.weight, w);
      if (!effective.is_same(w) && !at::equal(effective, w)) {
        throw_usage_error("ia3 cannot be merged exactly: another method's delta on '" + f.weight +
                          "' is not merged yet, and ia3 scales the weight it adds to; list that method before "
                          "ia3 in --method (e.g. lora+ia3)");
      }
    }
    for (const auto& f : folds_) scale(params, f, f.l.detach(), /*divide=*/false);
    *merged_ = true;
  }

  void unmerge(model::Backbone& backbone) override {
    DT_CHECK(*merged_, "ia3: unmerge() without a merge()");
    c10::NoGradGuard no_grad;
    const auto params = parameters(backbone);
    for (const auto& f : folds_) {
      DT_CHECK(!f.l.detach().eq(0).any().item<bool>(),
               "ia3: cannot unmerge '" + f.weight + "': its l has zero entries, so the scaled weights are lost");
    }
    for (const auto& f : folds_) scale(params, f, f.l.detach(), /*divide=*/true);
    *merged_ = false;
  }

  std::string describe() const override { return "ia3"; }

 private:
  struct Fold {
    std::string weight;  // the linear weight l folds into
    std::string bias;    // its bias, scaled too when rows scale and the backbone has it (BERT)
    bool rows = true;    // rows (k, v: output features) or columns (FFN output linear: input features)
    at::Tensor l;
  };

  static std::map<std::string, at::Tensor> parameters(const model::Backbone& backbone) {
    std::map<std::string, at::Tensor> out;
    for (const auto& [name, tensor] : backbone.named_parameters()) out.emplace(name, tensor);
    return out;
  }

  static void scale(const std::map<std::string, at::Tensor>& params, const Fold& f, const at::Tensor& l,
                    bool divide) {
    at::Tensor w = params.at(f.weight);
    const at::Tensor factor = (f.rows ? l.unsqueeze(1) : l.unsqueeze(0)).to(w.scalar_type());
    divide ? w.div_(factor) : w.mul_(factor);
    auto bias = params.find(f.bias);
    if (f.rows && bias != params.end()) {
      const at::Tensor b_factor = l.to(bias->second.scalar_type());
      divide ? bias->second.div_(b_factor) : bias->second.mul_(b_factor);
    }
  }

  std::vector<Fold> folds_;  // one per site, filled by attach()
  std::shared_ptr<bool> merged_ = std::make_shared<bool>(false);  // read by every hook
};

}  // namespace

void register_ia3(Registry& registry) {
  registry.add({"ia3", "(IA)^3: learned rescaling of keys, values and FFN intermediate activations", {},
                [](const OptionValues&) { return std::make_unique<Ia3>(); }});
}

}  // namespace dt::peft
