// peft/s3delta/space.cpp — the S3Delta search space and its (gated or plain) attachment; see s3delta.h.
#include <ATen/ATen.h>
#include <boost/algorithm/string.hpp>

#include <algorithm>
#include <cmath>
#include <set>

#include "peft/adapter/adapter.h"
#include "peft/s3delta/s3delta.h"
#include "util/error.h"

namespace dt::peft::s3delta {

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::Lora: return "lora";
    case Kind::Bitfit: return "bitfit";
    case Kind::Adapter: return "adapter";
    case Kind::LnGain: return "ln";
  }
  return "?";
}

std::vector<Kind> parse_kinds(const std::string& option, const std::string& text) {
  std::vector<std::string> parts;
  boost::split(parts, text, boost::is_any_of(","));
  std::vector<Kind> kinds;
  for (const auto& part : parts) {
    Kind kind;
    if (part == "lora") kind = Kind::Lora;
    else if (part == "bitfit") kind = Kind::Bitfit;
    else if (part == "adapter") kind = Kind::Adapter;
    else if (part == "ln") kind = Kind::LnGain;
    else throw_usage_error("--" + option + ": unknown module kind '" + part + "' (known: lora, bitfit, adapter, ln)");
    if (std::find(kinds.begin(), kinds.end(), kind) != kinds.end()) {
      throw_usage_error("--" + option + ": '" + part + "' is named twice");
    }
    kinds.push_back(kind);
  }
  return kinds;
}

std::string kinds_text(const std::vector<Kind>& kinds) {
  std::string out;
  for (Kind k : kinds) out += std::string(out.empty() ? "" : ",") + kind_name(k);
  return out;
}

int64_t adapter_bottleneck(const model::ModelConfig& config, const SpaceOptions& options) {
  return options.bottleneck > 0 ? options.bottleneck : std::max<int64_t>(1, config.d_model / 32);
}

int64_t Candidate::params() const {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

namespace {

std::string module_of(const std::string& weight) { return weight.substr(0, weight.rfind(".weight")); }

bool wants(const SpaceOptions& o, Kind k) { return std::find(o.kinds.begin(), o.kinds.end(), k) != o.kinds.end(); }

Candidate lora(const std::string& site, const std::string& weight, int64_t in, int64_t out, int64_t r) {
  const std::string m = module_of(weight);
  return {m + ".lora", Kind::Lora, site, weight, in, out, {{m + ".lora_A.weight", {r, in}}, {m + ".lora_B.weight", {out, r}}}};
}

Candidate bitfit(const std::string& site, int64_t features) {
  return {site + ".bitfit", Kind::Bitfit, site, "", features, features, {{site + ".bitfit_bias", {features}}}};
}

Candidate ln_gain(const std::string& site, int64_t features) {
  return {site + ".ln_gain", Kind::LnGain, site, "", features, features, {{site + ".ln_gain", {features}}}};
}

Candidate bottleneck(const std::string& site, int64_t d, int64_t m) {
  return {site + ".adapter", Kind::Adapter, site, "", d, d, adapter::bottleneck_plan(site + ".adapter", d, m)};
}

}  // namespace

std::vector<Candidate> search_space(const model::ModelConfig& config, const SpaceOptions& options) {
  DT_CHECK(options.lora_r > 0, "s3delta: LoRA rank must be positive");
  std::set<std::string> adapter_sites;
  for (const auto& s : adapter::houlsby_sites(config)) adapter_sites.insert(s.name);
  const int64_t m = adapter_bottleneck(config, options);
  std::vector<Candidate> out;
  // Per site: LoRA (parallel to the linear), the norm's gain, a bias, then the adapter (which reads the
  // site's output with the others applied: the paper's parallel-then-sequential order).
  for (const auto& s : model::describe_sites(config)) {
    using model::SiteKind;
    if (wants(options, Kind::Lora)) {
      if (s.kind == SiteKind::Projection) out.push_back(lora(s.name, s.weight, s.in_features, s.out_features, options.lora_r));
      // The FFN's linears have no projection site of their own: weight hooks, as peft/lora.
      if (s.kind == SiteKind::FfnIntermediate) out.push_back(lora("", s.weight, s.in_features, s.out_features, options.lora_r));
      if (s.kind == SiteKind::FfnOutput) out.push_back(lora("", s.weight, config.d_ff, s.out_features, options.lora_r));
    }
    if (wants(options, Kind::LnGain) && s.kind == SiteKind::LayerNorm) out.push_back(ln_gain(s.name, s.out_features));
    const bool linear_out = s.kind == SiteKind::Projection || s.kind == SiteKind::FfnIntermediate ||
                            s.kind == SiteKind::FfnOutput;
    if (wants(options, Kind::Bitfit) && (linear_out || s.kind == SiteKind::LayerNorm)) {
      out.push_back(bitfit(s.name, s.out_features));
    }
    if (wants(options, Kind::Adapter) && adapter_sites.count(s.name)) out.push_back(bottleneck(s.name, s.out_features, m));
  }
  return out;
}

namespace {

at::Tensor leaf(at::Tensor t) { return t.requires_grad_(true); }

// z_i of the current forward as a 0-d float32 tensor (with the α's graph during the structure step).
struct Gate {
  std::shared_ptr<const Gates> gates;
  int64_t index = 0;
  bool on() const { return gates != nullptr; }
  at::Tensor z() const {
    DT_CHECK(gates->z.defined(), "s3delta: a gated module ran before the gates were set");
    return gates->z.select(0, index);
  }
};

}  // namespace

std::vector<Trainable> attach_candidates(model::Backbone& backbone, const std::vector<Candidate>& candidates,
                                         const SpaceOptions& options, std::shared_ptr<const Gates> gates,
                                         const std::string& method) {
  std::vector<Trainable> out;
  const double scale = options.lora_alpha / static_cast<double>(options.lora_r);
  for (size_t i = 0; i < candidates.size(); ++i) {
    const Candidate& c = candidates[i];
    const Gate gate{gates, static_cast<int64_t>(i)};
    auto& hooks = backbone.hooks();
    std::vector<at::Tensor> tensors;
    switch (c.kind) {
      case Kind::Lora: {
        const double bound = 1.0 / std::sqrt(static_cast<double>(c.in));
        at::Tensor a = leaf(at::empty({options.lora_r, c.in}, at::kFloat).uniform_(-bound, bound));
        at::Tensor b = leaf(at::zeros({c.out, options.lora_r}, at::kFloat));
        if (!c.site.empty()) {
          hooks.add_output(c.site, [a, b, scale, gate](const at::Tensor& h, const at::Tensor& x) {
            at::Tensor d = at::matmul(at::matmul(x.to(a.scalar_type()), a.t()), b.t()) * scale;
            if (gate.on()) d = d * gate.z();
            return h + d.to(h.scalar_type());
          });
        } else {
          hooks.set_weight(c.weight, [a, b, scale, gate](const at::Tensor& w) {
            at::Tensor d = at::matmul(b, a) * scale;
            if (gate.on()) d = d * gate.z();
            return w + d.to(w.scalar_type());
          });
        }
        tensors = {a, b};
        break;
      }
      case Kind::Bitfit: {
        at::Tensor bias = leaf(at::zeros({c.out}, at::kFloat));
        hooks.add_output(c.site, [bias, gate](const at::Tensor& h, const at::Tensor&) {
          return h + (gate.on() ? bias * gate.z() : bias).to(h.scalar_type());
        });
        tensors = {bias};
        break;
      }
      case Kind::LnGain: {
        at::Tensor g = leaf(at::ones({c.out}, at::kFloat));
        hooks.add_output(c.site, [g, gate](const at::Tensor& h, const at::Tensor&) {
          // Gated: h ⊙ (1 + z·(g − 1)), the paper's h + z·(w ⊙ norm(x)) with g = 1 + w/γ.
          const at::Tensor factor = gate.on() ? 1.0 + gate.z() * (g - 1.0) : g;
          return h * factor.to(h.scalar_type());
        });
        tensors = {g};
        break;
      }
      case Kind::Adapter: {
        const int64_t m = c.tensors.front().shape.front();
        adapter::Bottleneck bn = adapter::make_bottleneck(c.out, m, adapter::Init::Houlsby);
        hooks.add_output(c.site, [bn, gate](const at::Tensor& h, const at::Tensor&) {
          at::Tensor d = bn.forward(h, adapter::Activation::Gelu);
          if (gate.on()) d = d * gate.z();
          return h + d.to(h.scalar_type());
        });
        tensors = {bn.down_weight, bn.down_bias, bn.up_weight, bn.up_bias};
        break;
      }
    }
    DT_CHECK(tensors.size() == c.tensors.size(), "s3delta: candidate " + c.name + " planned another tensor count");
    for (size_t t = 0; t < tensors.size(); ++t) out.push_back({c.tensors[t].name, tensors[t], method});
  }
  return out;
}

}  // namespace dt::peft::s3delta
