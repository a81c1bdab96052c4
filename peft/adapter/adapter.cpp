// peft/adapter/adapter.cpp — shared adapter modules: placement, bottleneck, sequential / parallel
// attachment, and reparameterized prefixes (see adapter.h).
#include "peft/adapter/adapter.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "util/error.h"

namespace dt::peft::adapter {

// ---- placement ------------------------------------------------------------------------------------

std::vector<model::SiteInfo> houlsby_sites(const model::ModelConfig& config) {
  std::vector<model::SiteInfo> out;
  for (const auto& s : model::describe_sites(config)) {
    const bool self_attention =
        s.kind == model::SiteKind::AttentionOutput && s.name.find("EncDecAttention") == std::string::npos;
    if (self_attention || s.kind == model::SiteKind::FfnOutput) out.push_back(s);
  }
  return out;
}

std::vector<model::SiteInfo> ffn_sites(const model::ModelConfig& config) {
  std::vector<model::SiteInfo> out;
  for (const auto& s : model::describe_sites(config)) {
    if (s.kind == model::SiteKind::FfnOutput) out.push_back(s);
  }
  return out;
}

// ---- the bottleneck module ------------------------------------------------------------------------

Activation parse_activation(const std::string& option, const std::string& value) {
  if (value == "relu") return Activation::Relu;
  if (value == "gelu") return Activation::Gelu;
  if (value == "tanh") return Activation::Tanh;
  if (value == "silu") return Activation::Silu;
  throw_usage_error("--" + option + ": unknown activation '" + value + "' (known: relu, gelu, tanh, silu)");
}

std::string activation_name(Activation a) {
  switch (a) {
    case Activation::Relu: return "relu";
    case Activation::Gelu: return "gelu";
    case Activation::Tanh: return "tanh";
    case Activation::Silu: return "silu";
  }
  return "?";
}

at::Tensor activate(Activation a, const at::Tensor& x) {
  switch (a) {
    case Activation::Relu: return at::relu(x);
    case Activation::Gelu: return at::gelu(x);
    case Activation::Tanh: return at::tanh(x);
    case Activation::Silu: return at::silu(x);
  }
  return x;
}

at::Tensor truncated_normal(const std::vector<int64_t>& shape, double std) {
  at::Tensor t = at::empty(shape, at::kFloat).normal_(0.0, std);
  for (at::Tensor bad = t.abs() > 2.0 * std; bad.any().item<bool>(); bad = t.abs() > 2.0 * std) {
    t = at::where(bad, at::empty_like(t).normal_(0.0, std), t);
  }
  return t;
}

namespace {

at::Tensor leaf(at::Tensor t) { return t.requires_grad_(true); }

}  // namespace

at::Tensor Bottleneck::forward(const at::Tensor& x, Activation act) const {
  const at::Tensor z = activate(act, at::linear(x.to(down_weight.scalar_type()), down_weight, down_bias));
  return at::linear(z, up_weight, up_bias).to(x.scalar_type());
}

Bottleneck make_bottleneck(int64_t d, int64_t m, Init init) {
  Bottleneck b;
  if (init == Init::Houlsby) {
    b.down_weight = truncated_normal({m, d}, 1e-2);
  } else {
    const double bound = 1.0 / std::sqrt(static_cast<double>(d));
    b.down_weight = at::empty({m, d}, at::kFloat).uniform_(-bound, bound);
  }
  b.down_weight = leaf(b.down_weight);
  b.down_bias = leaf(at::zeros({m}, at::kFloat));
  b.up_weight = leaf(at::zeros({d, m}, at::kFloat));
  b.up_bias = leaf(at::zeros({d}, at::kFloat));
  return b;
}

std::vector<model::TensorMeta> bottleneck_plan(const std::string& module, int64_t d, int64_t m) {
  return {{module + ".down.weight", {m, d}},
          {module + ".down.bias", {m}},
          {module + ".up.weight", {d, m}},
          {module + ".up.bias", {d}}};
}

void append_bottleneck(const std::string& module, const Bottleneck& b, const std::string& method,
                       std::vector<Trainable>& out) {
  out.push_back({module + ".down.weight", b.down_weight, method});
  out.push_back({module + ".down.bias", b.down_bias, method});
  out.push_back({module + ".up.weight", b.up_weight, method});
  out.push_back({module + ".up.bias", b.up_bias, method});
}

// ---- sequential and parallel adapters -------------------------------------------------------------

std::vector<model::TensorMeta> sequential_plan(const std::vector<model::SiteInfo>& sites, int64_t m) {
  std::vector<model::TensorMeta> out;
  for (const auto& s : sites) {
    for (auto& meta : bottleneck_plan(s.name + ".adapter", s.out_features, m)) out.push_back(std::move(meta));
  }
  return out;
}

std::vector<Trainable> sequential_attach(model::Backbone& backbone, const std::vector<model::SiteInfo>& sites,
                                         int64_t m, Activation act, const std::string& method) {
  std::vector<Trainable> out;
  for (const auto& s : sites) {
    Bottleneck b = make_bottleneck(s.out_features, m, Init::Houlsby);
    // The adapter sees the sublayer's output h and adds its own skip connection (Houlsby, Fig. 2).
    backbone.hooks().add_output(s.name, [b, act](const at::Tensor& h, const at::Tensor&) {
      return h + b.forward(h, act);
    });
    append_bottleneck(s.name + ".adapter", b, method, out);
  }
  return out;
}

std::vector<model::TensorMeta> parallel_plan(const model::ModelConfig& config, const ParallelOptions& options) {
  std::vector<model::TensorMeta> out;
  for (const auto& s : ffn_sites(config)) {
    for (auto& meta : bottleneck_plan(s.name + ".parallel_adapter", s.out_features, options.bottleneck)) {
      out.push_back(std::move(meta));
    }
  }
  return out;
}

std::vector<Trainable> parallel_attach(model::Backbone& backbone, const ParallelOptions& options,
                                       const std::string& method) {
  std::vector<Trainable> out;
  const double scale = options.scale;
  for (const auto& s : ffn_sites(backbone.config())) {
    DT_CHECK(s.in_features == s.out_features,
             "parallel adapter: site '" + s.name + "' maps " + std::to_string(s.in_features) + " -> " +
                 std::to_string(s.out_features) + " features; the FFN's input and output must match");
    Bottleneck b = make_bottleneck(s.in_features, options.bottleneck, Init::Lora);
    // Parallel to the FFN: it reads the FFN's input x, not its output (He et al., Eq. 9).
    backbone.hooks().add_output(s.name, [b, scale](const at::Tensor& h, const at::Tensor& x) {
      return h + b.forward(x, Activation::Relu) * scale;
    });
    append_bottleneck(s.name + ".parallel_adapter", b, method, out);
  }
  return out;
}

// ---- prefix tuning --------------------------------------------------------------------------------

std::vector<PrefixGroup> prefix_groups(const model::ModelConfig& config) {
  const auto sites = model::describe_sites(config);
  std::map<std::string, int64_t> kv_out;
  for (const auto& s : sites) kv_out[s.name] = s.out_features;
  std::vector<PrefixGroup> groups;
  auto group = [&groups](const std::string& name) -> PrefixGroup& {
    for (auto& g : groups) {
      if (g.name == name) return g;
    }
    groups.push_back(PrefixGroup{name, {}, 0, 0});
    return groups.back();
  };
  const std::string q = ".q";
  for (const auto& s : sites) {
    if (s.kind != model::SiteKind::Projection || s.name.size() < q.size() ||
        s.name.compare(s.name.size() - q.size(), q.size(), q) != 0) {
      continue;
    }
    const std::string attention = s.name.substr(0, s.name.size() - q.size());
    const bool cross = attention.find("EncDecAttention") != std::string::npos;
    const bool decoder = attention.rfind("decoder.", 0) == 0 || attention.rfind("model.", 0) == 0;
    PrefixGroup& g = group(cross ? "cross" : decoder ? "decoder" : "encoder");
    const int64_t kv = kv_out.at(attention + ".k");
    DT_CHECK(config.d_kv > 0 && kv % config.d_kv == 0,
             "prefix: keys of '" + attention + "' have " + std::to_string(kv) + " features, not a multiple of d_kv " +
                 std::to_string(config.d_kv));
    const int64_t heads = kv / config.d_kv;
    DT_CHECK(g.attentions.empty() || g.kv_heads == heads,
             "prefix: attentions of group '" + g.name + "' differ in their number of key/value heads");
    g.kv_heads = heads;
    g.head_dim = config.d_kv;
    g.attentions.push_back(attention);
  }
  return groups;
}

namespace {

std::string prefix_module(const PrefixGroup& g) { return "prefix." + g.name; }

// The shapes of one group's tensors, in registration order.
std::vector<model::TensorMeta> group_plan(const model::ModelConfig& config, const PrefixGroup& g,
                                          const PrefixOptions& o) {
  const std::string p = prefix_module(g);
  const int64_t d = config.d_model, out = 2 * static_cast<int64_t>(g.attentions.size()) * g.kv_dim();
  return {{p + ".embedding", {o.length, d}},
          {p + ".mlp.0.weight", {o.hidden, d}},
          {p + ".mlp.0.bias", {o.hidden}},
          {p + ".mlp.2.weight", {out, o.hidden}},
          {p + ".mlp.2.bias", {out}}};
}

}  // namespace

std::vector<model::TensorMeta> prefix_plan(const model::ModelConfig& config, const PrefixOptions& options) {
  std::vector<model::TensorMeta> out;
  for (const auto& g : prefix_groups(config)) {
    for (auto& meta : group_plan(config, g, options)) out.push_back(std::move(meta));
  }
  return out;
}

std::vector<Trainable> prefix_attach(model::Backbone& backbone, const PrefixOptions& options,
                                     const std::string& method) {
  std::vector<Trainable> out;
  const model::ModelConfig& config = backbone.config();
  for (const auto& g : prefix_groups(config)) {
    // The prefix code's initialization: nn.Embedding N(0, 1); nn.Linear U(±1/sqrt(fan_in)) for
    // weight and bias alike.
    const auto metas = group_plan(config, g, options);
    auto linear_init = [](const std::vector<int64_t>& shape, int64_t fan_in) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
      return leaf(at::empty(shape, at::kFloat).uniform_(-bound, bound));
    };
    const at::Tensor embedding = leaf(at::empty(metas[0].shape, at::kFloat).normal_(0.0, 1.0));
    const at::Tensor w0 = linear_init(metas[1].shape, config.d_model);
    const at::Tensor b0 = linear_init(metas[2].shape, config.d_model);
    const at::Tensor w2 = linear_init(metas[3].shape, options.hidden);
    const at::Tensor b2 = linear_init(metas[4].shape, options.hidden);
    const int64_t P = options.length, H = g.kv_heads, D = g.head_dim, rows = 2 * g.kv_dim();
    for (size_t j = 0; j < g.attentions.size(); ++j) {
      const int64_t first = static_cast<int64_t>(j) * rows;
      // Attention j reads rows [j·2·kv, (j+1)·2·kv) of the MLP's output: keys then values, heads
      // outermost, as the prefix code's view(len, 2·layers, heads, head_dim). Only that slice is
      // computed here, so a forward pays for the large second linear once in all (the small first
      // one, [P, d] -> [P, h], once per attention), and the hook keeps no state between forwards.
      backbone.hooks().set_prefix(g.attentions[j], [=](int64_t batch) {
        const at::Tensor hidden = at::tanh(at::linear(embedding, w0, b0));
        const at::Tensor kv = at::linear(hidden, w2.narrow(0, first, rows), b2.narrow(0, first, rows))
                                  .view({P, 2, H, D})
                                  .permute({1, 2, 0, 3});  // [2, H, P, D]
        return std::make_pair(kv[0].unsqueeze(0).expand({batch, H, P, D}),
                              kv[1].unsqueeze(0).expand({batch, H, P, D}));
      });
    }
    const at::Tensor tensors[] = {embedding, w0, b0, w2, b2};
    for (size_t i = 0; i < metas.size(); ++i) out.push_back({metas[i].name, tensors[i], method});
  }
  return out;
}

}  // namespace dt::peft::adapter
