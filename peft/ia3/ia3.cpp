// peft/ia3 — (IA)³ (Liu et al., 2022): learned vectors that rescale the keys (".k") and values
// (".v") of every attention — T5's cross-attention included, as in the paper's T0 — and the FFN's
// intermediate activation (".wi", after the activation; for gated FFNs, after act(gate) · up).
//
// h' = h ⊙ l, l initialized to ones, so the model is unchanged at step 0. On t5-base that is
// 12 · (2·768 + 3072) + 12 · (4·768 + 3072) = 129,024 values. Trainables: "<site>.ia3_l" [features].
#include <ATen/ATen.h>

#include "peft/method.h"

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

class Ia3 final : public Method {
 public:
  std::string name() const override { return "ia3"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    std::vector<model::TensorMeta> out;
    for (const auto& s : ia3_sites(config)) out.push_back({s.name + ".ia3_l", {s.out_features}});
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    std::vector<Trainable> out;
    for (const auto& s : ia3_sites(backbone.config())) {
      at::Tensor l = at::ones({s.out_features}, at::kFloat).requires_grad_(true);
      backbone.hooks().add_output(s.name, [l](const at::Tensor& h, const at::Tensor&) {
        return h * l.to(h.scalar_type());
      });
      out.push_back({s.name + ".ia3_l", l, "ia3"});
    }
    return out;
  }

  std::string describe() const override { return "ia3"; }
};

}  // namespace

void register_ia3(Registry& registry) {
  registry.add({"ia3", "(IA)^3: learned rescaling of keys, values and FFN intermediate activations", nullptr,
                [](const po::variables_map&) { return std::make_unique<Ia3>(); }});
}

}  // namespace dt::peft
