// peft/bitfit — BitFit (Ben Zaken et al.): only biases train.
//
// T5 and Llama have no biases, so, as the Compacter and LST papers' BitFit baselines do, zero-initialized
// biases are added at the output of q, k, v, o of every attention, of the FFN's input (after the
// activation: the hook site of the intermediate) and output linears, of every layer norm, and (T5,
// whose LM head decodes the label words) of the LM head: 282,496 on t5-base. Where the backbone has a
// bias already (BERT), that bias trains instead of a new one.
#include <ATen/ATen.h>

#include <set>

#include "peft/method.h"
#include "util/error.h"
#include "model/parameter_map.h"

namespace dt::peft {
namespace {

// The sites that get a bias, and the bias's size (the site's output features).
struct BiasSite {
  std::string site;
  std::string existing;  // name of the backbone's own bias parameter, if it has one
  int64_t features;
};

std::vector<BiasSite> bias_sites(const model::ModelConfig& config, const std::set<std::string>& param_names) {
  std::vector<BiasSite> out;
  for (const auto& s : model::describe_sites(config)) {
    const bool wanted = s.kind == model::SiteKind::Projection || s.kind == model::SiteKind::FfnIntermediate ||
                        s.kind == model::SiteKind::FfnOutput || s.kind == model::SiteKind::LayerNorm ||
                        (s.kind == model::SiteKind::Head && config.arch == model::Arch::T5);
    if (!wanted) continue;
    std::string existing;
    const auto dot = s.weight.rfind(".weight");
    if (s.kind != model::SiteKind::Head && dot != std::string::npos) {
      const std::string bias = s.weight.substr(0, dot) + ".bias";
      if (param_names.count(bias)) existing = bias;
    }
    out.push_back({s.name, existing, s.out_features});
  }
  return out;
}

std::string new_bias_name(const std::string& site) { return site + ".bitfit_bias"; }

class BitFit final : public Method {
 public:
  std::string name() const override { return "bitfit"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    std::set<std::string> names;
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const auto& m : model::describe(config)) {
      names.insert(m.name);
      shapes[m.name] = m.shape;
    }
    std::vector<model::TensorMeta> out;
    for (const auto& b : bias_sites(config, names)) {
      if (!b.existing.empty()) {
        out.push_back({b.existing, shapes[b.existing]});
      } else {
        out.push_back({new_bias_name(b.site), {b.features}});
      }
    }
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    std::map<std::string, at::Tensor> params = model::parameters_by_name(backbone);
    std::set<std::string> names;
    for (const auto& entry : params) names.insert(entry.first);
    std::vector<Trainable> out;
    for (const auto& b : bias_sites(backbone.config(), names)) {
      if (!b.existing.empty()) {
        at::Tensor bias = params[b.existing];
        bias.set_data(bias.clone());  // the frozen weights may be a read-only mapping
        bias.requires_grad_(true);
        out.push_back({b.existing, bias, "bitfit"});
        continue;
      }
      at::Tensor bias = at::zeros({b.features}, at::kFloat).requires_grad_(true);
      backbone.hooks().add_output(b.site, [bias](const at::Tensor& h, const at::Tensor&) { return h + bias; });
      out.push_back({new_bias_name(b.site), bias, "bitfit"});
    }
    return out;
  }

  std::string describe() const override { return "bitfit"; }
};

}  // namespace

void register_bitfit(Registry& registry) {
  registry.add({"bitfit", "BitFit: biases only (zero-initialized biases added where the backbone has none)", {},
                [](const OptionValues&) { return std::make_unique<BitFit>(); }});
}

}  // namespace dt::peft
