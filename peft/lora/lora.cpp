// peft/lora — LoRA (Hu et al.): h = W x + (alpha / r) · B A x, with A [r, in], B [out, r].
//
// Initialization as the LoRA code and HF PEFT: A ~ kaiming_uniform(a = sqrt(5)), i.e. U(±1/sqrt(in)),
// and B = 0, so the model is unchanged at step 0. On attention projections (q, k, v, o) LoRA is an
// output hook at the projection's site (the x it needs is the site's input). The FFN's linears
// (wi, wo) have no projection site of their own, so there LoRA is a weight hook, W' = W + s·B·A
// (the same function; it materializes W' per forward). Trainable names follow HF PEFT's adapter files:
// "<module>.lora_A.weight", "<module>.lora_B.weight" with <module> the adapted linear's name.
//
// merge() (HF PEFT's merge_adapter) adds s·B·A to each adapted weight in place and turns the hooks
// into pass-throughs (one `merged` flag shared with every hook lambda), so the backbone alone computes
// the same function; unmerge() subtracts the same delta (equal within fp rounding) and re-enables them.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <boost/algorithm/string.hpp>

#include <cmath>
#include <map>
#include <memory>
#include <set>

#include "peft/method.h"
#include "util/error.h"
#include "model/parameter_map.h"

namespace dt::peft {
namespace {

struct LoraOptions {
  int64_t r = 8;
  double alpha = 16.0;
  std::vector<std::string> targets = {"q", "v"};
};

struct LoraTarget {
  std::string site;    // hook site (projection targets) or empty (weight-hook targets)
  std::string weight;  // the adapted linear's weight name
  int64_t in = 0, out = 0;
};

const std::set<std::string>& known_targets() {
  static const std::set<std::string> known = {"q", "k", "v", "o", "wi", "wo"};
  return known;
}

std::vector<LoraTarget> lora_targets(const model::ModelConfig& config, const LoraOptions& options) {
  std::set<std::string> wanted(options.targets.begin(), options.targets.end());
  std::vector<LoraTarget> out;
  for (const auto& s : model::describe_sites(config)) {
    const std::string suffix = s.name.substr(s.name.rfind('.') + 1);
    if (s.kind == model::SiteKind::Projection && wanted.count(suffix)) {
      out.push_back({s.name, s.weight, s.in_features, s.out_features});
    } else if (s.kind == model::SiteKind::FfnIntermediate && wanted.count("wi")) {
      out.push_back({"", s.weight, s.in_features, s.out_features});
    } else if (s.kind == model::SiteKind::FfnOutput && wanted.count("wo")) {
      // The FFN's output linear maps d_ff -> d_model.
      out.push_back({"", s.weight, config.d_ff, s.out_features});
    }
  }
  return out;
}

std::string module_of(const std::string& weight) { return weight.substr(0, weight.rfind(".weight")); }

class Lora final : public Method {
 public:
  explicit Lora(LoraOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "lora"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    std::vector<model::TensorMeta> out;
    for (const auto& t : lora_targets(config, options_)) {
      out.push_back({module_of(t.weight) + ".lora_A.weight", {options_.r, t.in}});
      out.push_back({module_of(t.weight) + ".lora_B.weight", {t.out, options_.r}});
    }
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    const double scale = options_.alpha / static_cast<double>(options_.r);
    std::vector<Trainable> out;
    attached_.clear();
    *merged_ = false;
    std::shared_ptr<const bool> merged = merged_;
    for (const auto& t : lora_targets(backbone.config(), options_)) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(t.in));
      at::Tensor a = at::empty({options_.r, t.in}, at::kFloat).uniform_(-bound, bound).requires_grad_(true);
      at::Tensor b = at::zeros({t.out, options_.r}, at::kFloat).requires_grad_(true);
      if (!t.site.empty()) {
        backbone.hooks().add_output(t.site, [a, b, scale, merged](const at::Tensor& h, const at::Tensor& x) {
          if (*merged) return h;
          // In the adapters' float32, added back in the backbone's dtype (as HF PEFT does): a bf16
          // backbone keeps bf16 activations instead of being promoted to float32 from here on.
          return h + (at::matmul(at::matmul(x.to(a.scalar_type()), a.t()), b.t()) * scale).to(h.scalar_type());
        });
      } else {
        backbone.hooks().set_weight(t.weight, [a, b, scale, merged](const at::Tensor& w) {
          if (*merged) return w;
          return w + at::matmul(b, a).to(w.scalar_type()) * scale;
        });
      }
      attached_.push_back({t.weight, a, b});
      out.push_back({module_of(t.weight) + ".lora_A.weight", a, "lora"});
      out.push_back({module_of(t.weight) + ".lora_B.weight", b, "lora"});
    }
    return out;
  }

  bool can_merge() const override { return true; }
  void merge(model::Backbone& backbone) override {
    DT_CHECK(!*merged_, "lora: merge() called twice without unmerge()");
    add_delta(backbone, 1.0);
    *merged_ = true;
  }
  void unmerge(model::Backbone& backbone) override {
    DT_CHECK(*merged_, "lora: unmerge() without a merge()");
    add_delta(backbone, -1.0);
    *merged_ = false;
  }

  std::string describe() const override {
    return "lora(r=" + std::to_string(options_.r) + ",alpha=" + std::to_string(options_.alpha) +
           ",targets=" + boost::algorithm::join(options_.targets, ",") + ")";
  }

 private:
  struct Attached {
    std::string weight;
    at::Tensor a, b;
  };

  // W += sign · s·B·A in W's dtype, the product formed in float32 (as HF PEFT's get_delta_weight).
  void add_delta(model::Backbone& backbone, double sign) const {
    c10::NoGradGuard no_grad;
    const double scale = options_.alpha / static_cast<double>(options_.r);
    const std::map<std::string, at::Tensor> params = model::parameters_by_name(backbone);
    for (const auto& t : attached_) {
      auto it = params.find(t.weight);
      DT_CHECK(it != params.end(), "lora: the backbone has no weight '" + t.weight + "' to merge into");
      at::Tensor w = it->second;
      w.add_((at::matmul(t.b.detach(), t.a.detach()) * (sign * scale)).to(w.scalar_type()));
    }
  }

  LoraOptions options_;
  std::vector<Attached> attached_;  // filled by attach(), in target order
  std::shared_ptr<bool> merged_ = std::make_shared<bool>(false);  // read by every hook
};

LoraOptions parse_options(const OptionValues& values) {
  LoraOptions o;
  o.r = values.get<int64_t>("lora.r");
  o.alpha = values.get<double>("lora.alpha");
  o.targets.clear();
  boost::split(o.targets, values.get<std::string>("lora.targets"), boost::is_any_of(","));
  if (o.r <= 0) throw_usage_error("--lora.r must be positive, got " + std::to_string(o.r));
  for (const auto& t : o.targets) {
    if (!known_targets().count(t)) {
      throw_usage_error("--lora.targets: unknown target '" + t + "' (known: q, k, v, o, wi, wo)");
    }
  }
  return o;
}

}  // namespace

void register_lora(Registry& registry) {
  registry.add({"lora", "LoRA: low-rank updates B·A of the chosen projections",
                {
                 {"lora.r", int64_t{8},
                  "LoRA rank r"},
                 {"lora.alpha", double{16.0},
                  "LoRA alpha (scale = alpha / r)"},
                 {"lora.targets", std::string("q,v"),
                  "comma-separated projections to adapt: q, k, v, o, wi, wo"},
                },
                [](const OptionValues& values) { return std::make_unique<Lora>(parse_options(values)); }});
}

}  // namespace dt::peft
