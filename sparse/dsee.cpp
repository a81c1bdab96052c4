// sparse/dsee.cpp — DSEE (Chen et al., "DSEE: Dually Sparsity-Embedded Efficient Tuning"): sparse +
// low-rank deltas of the chosen projections, the sparse part as values over fixed indices. See
// sparse/methods.h for the parametrization; the support selection is below.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <boost/algorithm/string.hpp>
#include <fmt/format.h>

#include <map>
#include <set>

#include "model/device.h"
#include "model/parameter_map.h"
#include "sparse/index_codec.h"
#include "sparse/methods.h"
#include "sparse/scatter.h"
#include "util/error.h"

namespace dt::sparse {


namespace {

struct DseeTarget {
  std::string weight;  // the adapted linear's weight name
  int64_t out = 0, in = 0;
};

const std::set<std::string>& known_targets() {
  static const std::set<std::string> known = {"q", "k", "v", "o", "wi", "wo"};
  return known;
}

// The same target names as LoRA's (--lora.targets), resolved to weights through the hook sites.
std::vector<DseeTarget> dsee_targets(const model::ModelConfig& config, const DseeOptions& options) {
  std::set<std::string> wanted(options.targets.begin(), options.targets.end());
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& m : model::describe(config)) shapes[m.name] = m.shape;
  std::vector<DseeTarget> out;
  for (const auto& s : model::describe_sites(config)) {
    const std::string suffix = s.name.substr(s.name.rfind('.') + 1);
    const bool take = (s.kind == model::SiteKind::Projection && wanted.count(suffix)) ||
                      (s.kind == model::SiteKind::FfnIntermediate && wanted.count("wi")) ||
                      (s.kind == model::SiteKind::FfnOutput && wanted.count("wo"));
    if (!take || s.weight.empty()) continue;
    const auto& shape = shapes.at(s.weight);
    DT_CHECK(shape.size() == 2, "dsee: '" + s.weight + "' is not a matrix");
    out.push_back({s.weight, shape[0], shape[1]});
  }
  return out;
}

std::string module_of(const std::string& weight) { return weight.substr(0, weight.rfind(".weight")); }

int64_t card_of(const DseeTarget& t, const DseeOptions& o) { return std::min(o.sparse, t.out * t.in); }

// Best rank-r approximation of x by a randomized range finder (Halko et al.) with two power
// iterations, seeded so every rank computes the same thing; exact when r + 8 >= min(out, in).
at::Tensor low_rank(const at::Tensor& x, int64_t r) {
  const int64_t m = x.size(0), n = x.size(1), p = std::min<int64_t>(r + 8, std::min(m, n));
  if (p >= std::min(m, n)) {
    auto [u, s, vh] = at::linalg_svd(x, /*full_matrices=*/false);
    return at::matmul(u.narrow(1, 0, r) * s.narrow(0, 0, r), vh.narrow(0, 0, r));
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  at::Tensor q = std::get<0>(at::linalg_qr(at::matmul(x, at::randn({n, p}, gen, x.options()))));
  for (int i = 0; i < 2; ++i) {
    q = std::get<0>(at::linalg_qr(at::matmul(x.t(), q)));
    q = std::get<0>(at::linalg_qr(at::matmul(x, q)));
  }
  auto [u, s, vh] = at::linalg_svd(at::matmul(q.t(), x), /*full_matrices=*/false);
  return at::matmul(at::matmul(q, u.narrow(1, 0, r)) * s.narrow(0, 0, r), vh.narrow(0, 0, r));
}

}  // namespace

at::Tensor magnitude_support(const at::Tensor& w, int64_t card) {
  return top_k_indices({w.detach().abs().to(at::kFloat)}, card).front();
}

at::Tensor grebsmo_support(const at::Tensor& w, int64_t rank, int64_t card, int iters) {
  DT_CHECK(w.dim() == 2, "grebsmo_support: a matrix is needed");
  const at::Tensor x = w.detach().to(at::kFloat).contiguous();
  at::Tensor s = at::zeros_like(x);
  at::Tensor idx;
  for (int it = 0; it < iters; ++it) {
    const at::Tensor residual = x - low_rank(x - s, std::min<int64_t>(rank, std::min(x.size(0), x.size(1))));
    idx = top_k_indices({residual.abs()}, card).front();
    s = at::zeros({x.numel()}, x.options()).index_put_({idx}, residual.reshape(-1).index_select(0, idx)).view(x.sizes());
  }
  return idx;
}

DseeOptions dsee_options(const peft::OptionValues& values) {
  DseeOptions o;
  o.rank = values.get<int64_t>("dsee.rank");
  o.alpha = values.get<double>("dsee.alpha");
  if (o.alpha == 0.0) o.alpha = static_cast<double>(o.rank);
  o.sparse = values.get<int64_t>("dsee.sparse");
  o.select = values.get<std::string>("dsee.select");
  o.targets.clear();
  boost::split(o.targets, values.get<std::string>("dsee.targets"), boost::is_any_of(","));
  if (o.rank <= 0) throw_usage_error("--dsee.rank must be positive, got " + std::to_string(o.rank));
  if (o.sparse < 0) throw_usage_error("--dsee.sparse must be >= 0, got " + std::to_string(o.sparse));
  if (o.select != "grebsmo" && o.select != "magnitude") {
    throw_usage_error("--dsee.select '" + o.select + "': expected grebsmo | magnitude");
  }
  for (const auto& t : o.targets) {
    if (!known_targets().count(t)) throw_usage_error("--dsee.targets: unknown target '" + t + "' (known: q, k, v, o, wi, wo)");
  }
  return o;
}

std::vector<model::TensorMeta> DseeMethod::plan(const model::ModelConfig& config) const {
  std::vector<model::TensorMeta> out;
  for (const auto& t : dsee_targets(config, options_)) {
    const std::string m = module_of(t.weight);
    out.push_back({m + ".dsee_A.weight", {options_.rank, t.in}});
    out.push_back({m + ".dsee_B.weight", {t.out, options_.rank}});
    if (card_of(t, options_) > 0) out.push_back({m + ".dsee_S.values", {card_of(t, options_)}});
  }
  return out;
}

std::vector<peft::Trainable> DseeMethod::attach(model::Backbone& backbone) {
  const double scale = options_.alpha / static_cast<double>(options_.rank);
  const std::map<std::string, at::Tensor> by_name = model::parameters_by_name(backbone);
  support_ = Mask{};
  attached_.clear();
  *merged_ = false;
  std::shared_ptr<const bool> merged = merged_;
  std::vector<peft::Trainable> out;
  for (const auto& t : dsee_targets(backbone.config(), options_)) {
    const at::Tensor& w = by_name.at(t.weight);
    const std::string m = module_of(t.weight);
    at::Tensor a = (at::randn({options_.rank, t.in}, at::kFloat) * 0.02).requires_grad_(true);
    at::Tensor b = at::zeros({t.out, options_.rank}, at::kFloat).requires_grad_(true);
    out.push_back({m + ".dsee_A.weight", a, "dsee"});
    out.push_back({m + ".dsee_B.weight", b, "dsee"});
    const int64_t card = card_of(t, options_);
    if (card == 0) {
      attached_.push_back({t.weight, a, b, {}, {}});
      backbone.hooks().set_weight(t.weight, [a, b, scale, merged](const at::Tensor& w) {
        if (*merged) return w;
        return w + at::matmul(b, a).to(w.scalar_type()) * scale;
      });
      continue;
    }
    // The support is chosen on the host, so it is the same whatever --device the backbone is on.
    const at::Tensor w_host = w.detach().to(at::kCPU);
    const at::Tensor support = options_.select == "grebsmo" ? grebsmo_support(w_host, options_.rank, card)
                                                            : magnitude_support(w_host, card);
    support_.entries.push_back({t.weight, {t.out, t.in}, support});
    // The hooks' own copy of the indices, which to() moves with the values (the support stays on the host).
    const at::Tensor idx = support.clone();
    at::Tensor s = at::zeros({card}, at::kFloat).requires_grad_(true);
    out.push_back({m + ".dsee_S.values", s, "dsee"});
    attached_.push_back({t.weight, a, b, s, idx});
    backbone.hooks().set_weight(t.weight, [a, b, s, idx, scale, merged](const at::Tensor& w) {
      if (*merged) return w;
      return add_scattered(w + at::matmul(b, a).to(w.scalar_type()) * scale, idx, s * scale);
    });
  }
  return out;
}

// W += sign · (B·A + S)·scale in W's dtype, the products formed in float32.
void DseeMethod::add_delta(model::Backbone& backbone, double sign) const {
  c10::NoGradGuard no_grad;
  const double scale = sign * options_.alpha / static_cast<double>(options_.rank);
  const std::map<std::string, at::Tensor> by_name = model::parameters_by_name(backbone);
  for (const auto& t : attached_) {
    at::Tensor w = by_name.at(t.weight);
    w.add_((at::matmul(t.b.detach(), t.a.detach()) * scale).to(w.scalar_type()));
    if (t.s.defined()) w.view({-1}).index_add_(0, t.idx.to(at::kLong), (t.s.detach() * scale).to(w.scalar_type()));
  }
}

void DseeMethod::to(const c10::Device& device) {
  for (auto& t : attached_) {
    if (t.idx.defined()) model::move_tensor(t.idx, device);
  }
}

void DseeMethod::merge(model::Backbone& backbone) {
  DT_CHECK(!*merged_, "dsee: merge() called twice without unmerge()");
  add_delta(backbone, 1.0);
  *merged_ = true;
}

void DseeMethod::unmerge(model::Backbone& backbone) {
  DT_CHECK(*merged_, "dsee: unmerge() without a merge()");
  add_delta(backbone, -1.0);
  *merged_ = false;
}

std::string DseeMethod::describe() const {
  std::string out = fmt::format("dsee(rank={},alpha={},sparse={},select={},targets={}", options_.rank, options_.alpha,
                                options_.sparse, options_.select, boost::algorithm::join(options_.targets, ","));
  if (!support_.entries.empty()) out += ",support_hash=" + support_.hash_hex();
  return out + ")";
}

std::vector<peft::FixedIndices> DseeMethod::fixed_indices() const {
  std::vector<peft::FixedIndices> out;
  for (const auto& e : support_.entries) out.push_back({e.name, e.shape, e.indices});
  return out;
}

std::optional<peft::IndexAccounting> DseeMethod::index_accounting(const model::ModelConfig& config) const {
  peft::IndexAccounting a;
  for (const auto& t : dsee_targets(config, options_)) {
    a.eligible_params += t.out * t.in;
    if (card_of(t, options_) > 0) a.index_bytes += index_bytes_bound(card_of(t, options_), t.out * t.in);
  }
  return a;
}

void register_dsee(peft::Registry& registry) {
  registry.add({"dsee", "DSEE: low-rank B·A plus a fixed sparse S (GreBsmo support) per projection",
                {
                 {"dsee.rank", int64_t{4},
                  "rank r of B·A"},
                 {"dsee.alpha", double{0.0},
                  "scale alpha / r (0: alpha = r, scale 1)"},
                 {"dsee.sparse", int64_t{128},
                  "nonzeros of S per adapted weight"},
                 {"dsee.select", std::string("grebsmo"),
                  "grebsmo (robust decomposition W ~ UV + S) | magnitude (largest |W|): where S lives"},
                 {"dsee.targets", std::string("q,v"),
                  "comma-separated projections to adapt: q, k, v, o, wi, wo"},
                },
                [](const peft::OptionValues& values) { return std::make_unique<DseeMethod>(dsee_options(values)); }});
}

}  // namespace dt::sparse
