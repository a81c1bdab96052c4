// peft/compacter — Compacter (Karimi Mahabadi et al., 2021): Houlsby-placed adapters whose down and
// up projections are parameterized hypercomplex multiplication (PHM) layers with low-rank factors:
//     W = Σ_{i=1..n} A_i ⊗ B_i,   A_i ∈ R^{n×n} shared by every adapter ("slow" weights),
//                                 B_i = s_i t_iᵀ ∈ R^{(out/n)×(in/n)} per layer ("fast" weights).
// So the n A_i are counted once (n³ values, "compacter.phm_rule"), and each PHM layer has
// n · (out/n + in/n) = out + in factor values plus its bias; per adapter 3 · (m + d).
//
// Placement: adapter.h houlsby_sites (after each self-attention and each FFN). d_model and the
// bottleneck must be divisible by n (checked with a UsageError). Initialization: the up layer's s is
// zero, so W_up = 0 and the model is exactly unchanged at step 0 (Houlsby's near-identity); A_i ~
// N(0, 1/n) and the other factors U(±sqrt(3)·σ) with σ² = 1/sqrt(3·in), which gives W the variance
// 1/(3·in) of a default nn.Linear at any n. Biases start at zero.
// Trainables: "compacter.phm_rule" [n, n, n], then per site "<site>.compacter.down.{s,t,bias}",
// "<site>.compacter.up.{s,t,bias}" with s [n, out/n], t [n, in/n].
#include <ATen/ATen.h>

#include <cmath>

#include "peft/adapter/adapter.h"
#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

struct CompacterOptions {
  int64_t n = 4;
  int64_t bottleneck = 48;
  adapter::Activation activation = adapter::Activation::Relu;
};

// One PHM layer's own tensors: s [n, out/n], t [n, in/n], bias [out].
struct Phm {
  at::Tensor s, t, bias;
  // Σ_i A_i ⊗ (s_i t_iᵀ) [out, in]: entry ((a, b), (c, e)) = Σ_i A[i, a, c] s[i, b] t[i, e].
  at::Tensor weight(const at::Tensor& rule) const {
    const int64_t n = rule.size(0);
    return at::einsum("iac,ib,ie->abce", {rule, s, t}).reshape({n * s.size(1), n * t.size(1)});
  }
};

class Compacter final : public Method {
 public:
  explicit Compacter(CompacterOptions options) : options_(options) {}
  std::string name() const override { return "compacter"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    const int64_t n = options_.n, m = options_.bottleneck;
    std::vector<model::TensorMeta> out = {{"compacter.phm_rule", {n, n, n}}};
    for (const auto& s : sites(config)) {
      const int64_t d = s.out_features;
      const std::string p = s.name + ".compacter";
      out.push_back({p + ".down.s", {n, m / n}});
      out.push_back({p + ".down.t", {n, d / n}});
      out.push_back({p + ".down.bias", {m}});
      out.push_back({p + ".up.s", {n, d / n}});
      out.push_back({p + ".up.t", {n, m / n}});
      out.push_back({p + ".up.bias", {d}});
    }
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    const int64_t n = options_.n, m = options_.bottleneck;
    const auto act = options_.activation;
    const at::Tensor rule =
        at::empty({n, n, n}, at::kFloat).normal_(0.0, 1.0 / std::sqrt(static_cast<double>(n))).requires_grad_(true);
    std::vector<Trainable> out = {{"compacter.phm_rule", rule, "compacter"}};
    for (const auto& site : sites(backbone.config())) {
      const int64_t d = site.out_features;
      const Phm down{factor({n, m / n}, d), factor({n, d / n}, d), at::zeros({m}, at::kFloat).requires_grad_(true)};
      const Phm up{at::zeros({n, d / n}, at::kFloat).requires_grad_(true), factor({n, m / n}, m),
                   at::zeros({d}, at::kFloat).requires_grad_(true)};
      backbone.hooks().add_output(site.name, [rule, down, up, act](const at::Tensor& h, const at::Tensor&) {
        const at::Tensor x = h.to(at::kFloat);
        const at::Tensor z = adapter::activate(act, at::linear(x, down.weight(rule), down.bias));
        return h + at::linear(z, up.weight(rule), up.bias).to(h.scalar_type());
      });
      const std::string p = site.name + ".compacter";
      out.push_back({p + ".down.s", down.s, "compacter"});
      out.push_back({p + ".down.t", down.t, "compacter"});
      out.push_back({p + ".down.bias", down.bias, "compacter"});
      out.push_back({p + ".up.s", up.s, "compacter"});
      out.push_back({p + ".up.t", up.t, "compacter"});
      out.push_back({p + ".up.bias", up.bias, "compacter"});
    }
    return out;
  }

  std::string describe() const override {
    return "compacter(n=" + std::to_string(options_.n) + ",bottleneck=" + std::to_string(options_.bottleneck) +
           ",activation=" + adapter::activation_name(options_.activation) + ")";
  }

 private:
  // Houlsby placement; every site's width must split into n blocks.
  std::vector<model::SiteInfo> sites(const model::ModelConfig& config) const {
    auto out = adapter::houlsby_sites(config);
    for (const auto& s : out) {
      if (s.out_features % options_.n != 0) {
        throw_usage_error("--compacter.n " + std::to_string(options_.n) + " does not divide the hidden size " +
                          std::to_string(s.out_features) + " of model '" + config.name + "' (site " + s.name + ")");
      }
    }
    return out;
  }

  // A low-rank factor of a PHM layer with `in` inputs: U(±sqrt(3)·σ), σ² = 1/sqrt(3·in).
  static at::Tensor factor(const std::vector<int64_t>& shape, int64_t in) {
    const double bound = std::sqrt(3.0 / std::sqrt(3.0 * static_cast<double>(in)));
    return at::empty(shape, at::kFloat).uniform_(-bound, bound).requires_grad_(true);
  }

  CompacterOptions options_;
};

}  // namespace

void register_compacter(Registry& registry) {
  registry.add({"compacter", "Compacter: Houlsby-placed adapters of shared Kronecker (PHM) factors",
                {
                 {"compacter.n", int64_t{4},
                  "number n of Kronecker products (A_i are n x n, shared by every adapter)"},
                 {"compacter.bottleneck", int64_t{48},
                  "adapter bottleneck size (divisible by n)"},
                 {"compacter.activation", std::string("relu"),
                  "adapter nonlinearity: relu, gelu, tanh, silu"},
                },
                [](const OptionValues& values) {
                  CompacterOptions o;
                  o.n = values.get<int64_t>("compacter.n");
                  o.bottleneck = values.get<int64_t>("compacter.bottleneck");
                  if (o.n <= 0 || o.bottleneck <= 0) {
                    throw_usage_error("--compacter.n and --compacter.bottleneck must be positive, got " +
                                      std::to_string(o.n) + " and " + std::to_string(o.bottleneck));
                  }
                  if (o.bottleneck % o.n != 0) {
                    throw_usage_error("--compacter.bottleneck " + std::to_string(o.bottleneck) +
                                      " is not divisible by --compacter.n " + std::to_string(o.n));
                  }
                  o.activation = adapter::parse_activation("compacter.activation",
                                                           values.get<std::string>("compacter.activation"));
                  return std::make_unique<Compacter>(o);
                }});
}

}  // namespace dt::peft
