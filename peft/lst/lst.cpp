// peft/lst — Ladder Side Tuning (Sung, Cho, Bansal, NeurIPS 2022).
//
// Design note. A small side network, shaped like the backbone with d_model, d_ff and d_kv divided by
// r (heads unchanged), learns next to the frozen backbone. The backbone runs without autograd, so
// nothing inside it is kept for backward: backward never enters the backbone and costs only the side
// network's activations (plus the backbone's block outputs, which the downsamples' weight gradients
// need as their inputs). Ladder connections feed the backbone's block outputs into the side network:
//
//   s = Down_first(embedded input)
//   for each side layer j (backbone layer k_j, the kept ones in order):
//     s = mu_j * s + (1 - mu_j) * Down_j(h_backbone[k_j]),   mu_j = sigmoid(alpha_j / T), alpha_j = 0
//     s = side_block_j(s)
//   logits = frozen backbone head(Up(side final norm(s)))
//
// as in the LST code (modeling_side_t5.py); T5's encoder and decoder each have such a ladder, and
// the side decoder cross-attends to the side encoder. Layers in --lst.drop get no side layer.
// BERT (not in the LST code; built the same way): one ladder over the encoder layers; the side BERT
// adds its own position and token-type embeddings and LayerNorm (pruned from the backbone's) to the
// mixed input, and its own pooler (pruned, trained) feeds the backbone's classifier through Up.
//
// The side network IS a second backbone of the same architecture (model::make_backbone with the
// reduced config), attached to through its own hook sites, so no block is written twice:
//   * the side's input is Down_first of the backbone's embedded input: an input hook at the side's
//     embedding site embeds the ids with the backbone's table, downsamples, and mixes ladder 0 in;
//   * T5's decoder consults no input hook: its side embedding table is a weight hook returning
//     Down_first(backbone table), computed once per forward (vocab·d·d/r multiply-adds, under 1% of a
//     t5-base step), and its block 0 gets the mixed input through its first norm and attention-output
//     sites (attach_t5_decoder_input);
//   * mixing before side layer j+1 is an output hook at side block j's ".block_out";
//   * the head is the backbone's: Llama's task head "score.weight" [labels, d] (trained, as every
//     task head) reaches the side as the weight hook score·Up, which equals score(Up(h)); LM heads
//     (T5 label words, Llama LM) are an output hook at the side's "lm_head" site computing
//     head(Up(h)) with the frozen backbone head (T5 v1.0's tied head keeps its d^-0.5 scale of the
//     backbone's d). The side's own norms, the final one included, are its own and trainable.
//
// Initialization: the side network's weights are the backbone's, structurally pruned: one choice of
// d/r residual indices for the whole network, d_ff/r per FFN, d_kv/r per attention and kv head group
// (q, k, v, o consistent; Llama keeps rotary pairs (j, j + d_kv/2) together, HF's rotate_half). The
// LST code ranks by Fisher information; here the rank is the summed weight magnitude |W| of every
// weight touching an index (torch-pruning's L1 criterion), which needs no data and is the same on
// every rank. --lst.prune random keeps the side's random initialization instead. Down and Up are
// nn.Linear-initialized (U(±1/sqrt(in))), Down with a bias as in the LST code, Up without.
//
// Trainable, in this order: "side.<HF name>" for every side parameter except its embedding table and
// LM head (unused: the hooks above replace them) and its task head; per ladder ("", or "encoder." and
// "decoder." for T5) "<stack>side_first_downsample.{weight,bias}", "<stack>side_downsamples.<j>.
// {weight,bias}", "<stack>side_gates.<j>" [1]; "side_upsample.weight" [d, d/r]. On t5-base with the
// paper's r = 8 and layers 0, 4, 8 dropped that is 3,877,938 parameters, the paper's 1.74%.
// LST composes with no method that hooks or trains the backbone (their gradients could not flow
// through a backbone run without autograd); forward() checks that.
#include <c10/core/GradMode.h>
#include "peft/lst/lst.h"

#include <ATen/ATen.h>
#include <boost/algorithm/string.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "model/device.h"
#include "model/load.h"
#include "model/parameter_map.h"
#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {

// ---- the side network's shape --------------------------------------------------------------------

std::vector<int64_t> lst_kept_layers(int64_t layers, const std::vector<int64_t>& drop) {
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < layers; ++i) {
    if (std::find(drop.begin(), drop.end(), i) == drop.end()) kept.push_back(i);
  }
  return kept;
}

namespace {

// The side's head size: d_kv / r rounded down, as LST's code sizes every dimension (d // r); Llama's
// rotary rotates pairs, so there it is rounded down to even and is at least one pair.
int64_t side_head_size(const model::ModelConfig& c, int64_t r) {
  // (BERT and Llama tie d_model to heads x head size; T5 does not.)
  const int64_t d = c.d_kv / r;
  return c.arch == model::Arch::Llama ? std::max<int64_t>(2, d - d % 2) : d;
}

}  // namespace

model::ModelConfig lst_side_config(const model::ModelConfig& c, const LstOptions& o) {
  if (o.r <= 0) throw_usage_error("--lst.r must be positive, got " + std::to_string(o.r));
  const int64_t side_kv = side_head_size(c, o.r);
  if (side_kv < 1 || c.d_model / o.r < 1 || c.d_ff / o.r < 1) {
    throw_usage_error(fmt::format("--lst.r {} is too large for '{}' (d_model {}, d_ff {}, d_kv {}): the side network "
                                  "would have a dimension of 0",
                                  o.r, c.name, c.d_model, c.d_ff, c.d_kv));
  }
  const int64_t decoder_layers = c.arch == model::Arch::T5 ? c.num_decoder_layers : c.num_layers;
  std::set<int64_t> seen;
  for (int64_t i : o.drop) {
    if (i < 0 || i >= std::min(c.num_layers, decoder_layers)) {
      throw_usage_error(fmt::format("--lst.drop: layer {} is not a layer of '{}' (0..{})", i, c.name,
                                    std::min(c.num_layers, decoder_layers) - 1));
    }
    if (!seen.insert(i).second) throw_usage_error(fmt::format("--lst.drop names layer {} twice", i));
  }
  model::ModelConfig s = c;
  s.name = c.name + ":lst-side";
  // Floor division, as LST's code (d // r): any r works on any backbone. Llama and BERT tie d_model
  // to heads x head size (heads unchanged), so there the side's d_model follows its head size.
  s.d_kv = side_kv;
  s.d_model = c.arch == model::Arch::T5 ? c.d_model / o.r : c.num_heads * side_kv;
  s.d_ff = c.d_ff / o.r;
  s.num_layers = c.num_layers - static_cast<int64_t>(o.drop.size());
  if (c.arch == model::Arch::T5) s.num_decoder_layers = c.num_decoder_layers - static_cast<int64_t>(o.drop.size());
  if (s.num_layers <= 0 || (c.arch == model::Arch::T5 && s.num_decoder_layers <= 0)) {
    throw_usage_error("--lst.drop drops every layer of '" + c.name + "'; the side network needs one");
  }
  s.dtype = c10::ScalarType::Float;
  return s;
}

namespace {

// ---- names -----------------------------------------------------------------------------------------

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

// The side's parameters that do not train: its embedding table and LM head (the hooks replace them).
bool is_table(const std::string& name) {
  return name == "shared.weight" || name == "model.embed_tokens.weight" || name == "lm_head.weight" ||
         name == "embeddings.word_embeddings.weight";
}


// One ladder: Llama's or BERT's, or T5's encoder's or decoder's.
struct Ladder {
  std::string prefix;           // "" | "encoder." | "decoder."
  std::string blocks;           // "model.layers." | "encoder.layer." | "encoder.block." | "decoder.block."
  std::vector<int64_t> kept;    // backbone layer of each side layer
  int64_t hidden_offset = 0;    // where this stack's block outputs start in ForwardResult::hidden_states
  at::Tensor first_w, first_b;  // Down_first
  std::vector<at::Tensor> down_w, down_b, gates;
};

std::vector<Ladder> ladders(const model::ModelConfig& c, const LstOptions& o) {
  auto ladder = [&o](std::string prefix, std::string blocks, int64_t layers, int64_t offset) {
    Ladder l;
    l.prefix = std::move(prefix);
    l.blocks = std::move(blocks);
    l.kept = lst_kept_layers(layers, o.drop);
    l.hidden_offset = offset;
    return l;
  };
  if (c.arch == model::Arch::Llama) return {ladder("", "model.layers.", c.num_layers, 0)};
  if (c.arch == model::Arch::Bert) return {ladder("", "encoder.layer.", c.num_layers, 0)};
  return {ladder("encoder.", "encoder.block.", c.num_layers, 0),
          ladder("decoder.", "decoder.block.", c.num_decoder_layers, c.num_layers)};
}

std::vector<model::TensorMeta> lst_plan(const model::ModelConfig& c, const LstOptions& o) {
  const model::ModelConfig s = lst_side_config(c, o);
  std::vector<model::TensorMeta> out;
  for (const auto& meta : model::describe(s)) {
    if (!is_table(meta.name)) out.push_back({"side." + meta.name, meta.shape});
  }
  const int64_t d = c.d_model, ds = s.d_model;
  for (const auto& l : ladders(c, o)) {
    out.push_back({l.prefix + "side_first_downsample.weight", {ds, d}});
    out.push_back({l.prefix + "side_first_downsample.bias", {ds}});
    for (size_t j = 0; j < l.kept.size(); ++j) {
      out.push_back({l.prefix + "side_downsamples." + std::to_string(j) + ".weight", {ds, d}});
      out.push_back({l.prefix + "side_downsamples." + std::to_string(j) + ".bias", {ds}});
    }
    for (size_t j = 0; j < l.kept.size(); ++j) out.push_back({l.prefix + "side_gates." + std::to_string(j), {1}});
  }
  out.push_back({"side_upsample.weight", {d, ds}});
  return out;
}

// ---- structural pruning ----------------------------------------------------------------------------

enum class Axis { None, Model, Ff, QHeads, KvHeads };
struct Role {
  Axis rows = Axis::None, cols = Axis::None;
  std::string module;  // the attention or FFN module an Ff/heads axis belongs to
};

// Which axes of a backbone weight are the residual (Model), an FFN's, or an attention's heads.
// Biases (BERT's) have the rows of their weight. The module key pairs what must be pruned alike:
// an attention's q, k, v and output rows/columns, an FFN's input rows and output columns.
Role role_of(const std::string& n) {
  auto mod = [&n](const std::string& suffix) { return n.substr(0, n.size() - suffix.size()); };
  if (ends_with(n, "layernorm.weight") || ends_with(n, "layer_norm.weight") || n == "model.norm.weight" ||
      ends_with(n, "LayerNorm.weight") || ends_with(n, "LayerNorm.bias")) {
    return {Axis::Model, Axis::None, ""};
  }
  if (is_table(n) || n == "embeddings.position_embeddings.weight" || n == "embeddings.token_type_embeddings.weight") {
    return {Axis::None, Axis::Model, ""};
  }
  // BERT: <layer>.attention.self.{query,key,value}, <layer>.attention.output.dense, <layer>.intermediate.dense,
  // <layer>.output.dense, pooler.dense.
  if (n == "pooler.dense.weight") return {Axis::Model, Axis::Model, ""};
  if (n == "pooler.dense.bias") return {Axis::Model, Axis::None, ""};
  for (const std::string p : {".self.query.", ".self.key.", ".self.value."}) {
    for (const std::string wb : {"weight", "bias"}) {
      if (!ends_with(n, p + wb)) continue;
      const Axis heads = p == ".self.query." ? Axis::QHeads : Axis::KvHeads;
      return {heads, wb == "weight" ? Axis::Model : Axis::None, mod(p + wb)};
    }
  }
  if (ends_with(n, ".attention.output.dense.weight")) return {Axis::Model, Axis::QHeads, mod(".output.dense.weight")};
  if (ends_with(n, ".intermediate.dense.weight")) return {Axis::Ff, Axis::Model, mod(".intermediate.dense.weight")};
  if (ends_with(n, ".intermediate.dense.bias")) return {Axis::Ff, Axis::None, mod(".intermediate.dense.bias")};
  if (ends_with(n, ".output.dense.weight")) return {Axis::Model, Axis::Ff, mod(".output.dense.weight")};
  if (ends_with(n, ".output.dense.bias")) return {Axis::Model, Axis::None, ""};
  if (ends_with(n, "relative_attention_bias.weight")) return {};  // [buckets, heads]: heads unchanged
  for (const char* s : {".q_proj.weight", ".q.weight"}) {
    if (ends_with(n, s)) return {Axis::QHeads, Axis::Model, mod(s)};
  }
  for (const char* s : {".k_proj.weight", ".v_proj.weight", ".k.weight", ".v.weight"}) {
    if (ends_with(n, s)) return {Axis::KvHeads, Axis::Model, mod(s)};
  }
  for (const char* s : {".o_proj.weight", ".o.weight"}) {
    if (ends_with(n, s)) return {Axis::Model, Axis::QHeads, mod(s)};
  }
  for (const char* s : {".gate_proj.weight", ".up_proj.weight", ".wi.weight", ".wi_0.weight", ".wi_1.weight"}) {
    if (ends_with(n, s)) return {Axis::Ff, Axis::Model, mod(s)};
  }
  for (const char* s : {".down_proj.weight", ".wo.weight"}) {
    if (ends_with(n, s)) return {Axis::Model, Axis::Ff, mod(s)};
  }
  DT_FAIL("lst: no pruning rule for parameter '" + n + "'");
}

// The `k` largest of `score` (stable on ties), ascending: the kept indices keep their order.
at::Tensor top_sorted(const at::Tensor& score, int64_t k) {
  const at::Tensor order = std::get<1>(at::sort(score, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(0, 0, k)));
}

// Ranks every index of the backbone by the summed magnitude of the weights that touch it and gives
// the side's weights as sub-matrices of the backbone's.
class Pruner {
 public:
  Pruner(const model::ModelConfig& c, const model::ModelConfig& side,
         const std::vector<std::pair<std::string, at::Tensor>>& params)
      : c_(c), s_(side) {
    for (const auto& [name, t] : params) {
      if (model::is_task_head(name)) continue;
      weights_[name] = t.detach().to(at::kCPU, at::kFloat);  // pruning runs on the host
    }
    at::Tensor model_score = at::zeros({c.d_model}, at::kFloat);
    for (const auto& [name, w] : weights_) {
      const Role role = role_of(name);
      add(model_score, role, Axis::Model, w);
      if (role.rows == Axis::Ff || role.cols == Axis::Ff) {
        add(score(ff_score_, role.module, {c.d_ff}), role, Axis::Ff, w);
      }
      if (role.rows == Axis::QHeads || role.cols == Axis::QHeads || role.rows == Axis::KvHeads) {
        at::Tensor& s = score(head_score_, role.module, {c.num_kv_heads, c.d_kv});
        const int64_t group = c.num_heads / c.num_kv_heads;
        const at::Tensor rows = w.dim() == 1 ? w.abs() : w.abs().sum(1);
        if (role.rows == Axis::KvHeads) s += rows.view({c.num_kv_heads, c.d_kv});
        if (role.rows == Axis::QHeads) s += rows.view({c.num_kv_heads, group, c.d_kv}).sum(1);
        if (role.cols == Axis::QHeads) s += w.abs().sum(0).view({c.num_kv_heads, group, c.d_kv}).sum(1);
      }
    }
    model_ = top_sorted(model_score, side.d_model);
  }

  // The side value of backbone weight `name`.
  at::Tensor pruned(const std::string& name) {
    const at::Tensor& w = weights_.at(name);
    const Role role = role_of(name);
    at::Tensor out = w;
    if (role.rows != Axis::None) out = out.index_select(0, index(role.rows, role.module));
    if (role.cols != Axis::None) out = out.index_select(1, index(role.cols, role.module));
    return out;
  }

 private:
  static void add(at::Tensor& score, const Role& role, Axis axis, const at::Tensor& w) {
    if (role.rows == axis) score += w.dim() == 1 ? w.abs() : w.abs().sum(1);
    if (role.cols == axis) score += w.abs().sum(0);
  }
  static at::Tensor& score(std::map<std::string, at::Tensor>& m, const std::string& key,
                           std::vector<int64_t> shape) {
    auto it = m.find(key);
    if (it == m.end()) it = m.emplace(key, at::zeros(shape, at::kFloat)).first;
    return it->second;
  }

  at::Tensor index(Axis axis, const std::string& module) {
    if (axis == Axis::Model) return model_;
    if (axis == Axis::Ff) return top_sorted(ff_score_.at(module), s_.d_ff);
    // Heads: one choice of d_kv/r per kv head group, shared by its query heads (q·k and v->o agree).
    const at::Tensor& s = head_score_.at(module);
    const int64_t D = c_.d_kv, Ds = s_.d_kv, group = c_.num_heads / c_.num_kv_heads;
    std::vector<at::Tensor> per_group;
    for (int64_t g = 0; g < c_.num_kv_heads; ++g) {
      if (c_.arch == model::Arch::Llama) {  // rotate_half pairs j with j + D/2
        const at::Tensor pair = s[g].narrow(0, 0, D / 2) + s[g].narrow(0, D / 2, D / 2);
        const at::Tensor keep = top_sorted(pair, Ds / 2);
        per_group.push_back(at::cat({keep, keep + D / 2}));
      } else {
        per_group.push_back(top_sorted(s[g], Ds));
      }
    }
    std::vector<at::Tensor> rows;
    const int64_t heads = axis == Axis::KvHeads ? c_.num_kv_heads : c_.num_heads;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = axis == Axis::KvHeads ? h : h / group;
      rows.push_back(per_group[g] + h * D);
    }
    return at::cat(rows);
  }

  const model::ModelConfig& c_;
  const model::ModelConfig& s_;
  std::map<std::string, at::Tensor> weights_;
  std::map<std::string, at::Tensor> ff_score_, head_score_;
  at::Tensor model_;
};

// ---- the method ----------------------------------------------------------------------------------

class Lst final : public Method {
 public:
  explicit Lst(LstOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "lst"; }
  bool overrides_forward() const override { return true; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    return lst_plan(config, options_);
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    DT_CHECK(!side_, "lst: attach() called twice");
    check_alone(backbone);
    const model::ModelConfig& c = backbone.config();
    const model::ModelConfig sc = lst_side_config(c, options_);
    const auto params = backbone.named_parameters();
    auto param = [&params](const std::string& name) {
      for (const auto& [n, t] : params) {
        if (n == name) return t;
      }
      DT_FAIL("lst: the backbone has no parameter '" + name + "'");
    };

    // ---- the side network, pruned from the backbone
    const int64_t num_labels = backbone.num_labels();
    if (c.arch == model::Arch::T5 && !backbone.reads_label_words() && num_labels > 0) {
      throw_usage_error("--method lst: T5 with a classifier head is not supported (label words are)");
    }
    if (c.arch == model::Arch::Bert && num_labels == 0) {
      throw_usage_error("--method lst on BERT needs a task head (a classification task)");
    }
    side_ = model::make_backbone(sc, num_labels);
    ladders_ = ladders(c, options_);
    hidden_count_ = c.num_layers + (c.arch == model::Arch::T5 ? c.num_decoder_layers : 0);
    std::map<std::string, at::Tensor> side_params = model::parameters_by_name(*side_);
    {
      c10::NoGradGuard no_grad;
      if (options_.prune == "magnitude") {
        Pruner pruner(c, sc, params);
        for (auto& [n, t] : side_params) {
          if (model::is_task_head(n)) continue;  // the backbone's head is used instead
          t.copy_(pruner.pruned(backbone_name(n)));
        }
      }
    }
    std::vector<Trainable> out;
    for (const auto& meta : model::describe(sc)) {
      at::Tensor t = side_params.at(meta.name);
      t.requires_grad_(!is_table(meta.name));
      if (!is_table(meta.name)) out.push_back({"side." + meta.name, t, "lst"});
    }
    for (const auto& [n, t] : side_params) {
      if (model::is_task_head(n)) t.requires_grad_(false);
    }

    // ---- ladders: downsamples and gates (nn.Linear's initialization; alpha = 0)
    const int64_t d = c.d_model, ds = sc.d_model;
    const double bound = 1.0 / std::sqrt(static_cast<double>(d));
    auto uniform = [](std::vector<int64_t> shape, double b) {
      return at::empty(shape, at::kFloat).uniform_(-b, b).requires_grad_(true);
    };
    for (Ladder& l : ladders_) {
      l.first_w = uniform({ds, d}, bound);
      l.first_b = uniform({ds}, bound);
      out.push_back({l.prefix + "side_first_downsample.weight", l.first_w, "lst"});
      out.push_back({l.prefix + "side_first_downsample.bias", l.first_b, "lst"});
      for (size_t j = 0; j < l.kept.size(); ++j) {
        l.down_w.push_back(uniform({ds, d}, bound));
        l.down_b.push_back(uniform({ds}, bound));
        out.push_back({l.prefix + "side_downsamples." + std::to_string(j) + ".weight", l.down_w.back(), "lst"});
        out.push_back({l.prefix + "side_downsamples." + std::to_string(j) + ".bias", l.down_b.back(), "lst"});
      }
      for (size_t j = 0; j < l.kept.size(); ++j) {
        l.gates.push_back(at::zeros({1}, at::kFloat).requires_grad_(true));
        out.push_back({l.prefix + "side_gates." + std::to_string(j), l.gates.back(), "lst"});
      }
    }
    up_ = uniform({d, ds}, 1.0 / std::sqrt(static_cast<double>(ds)));
    out.push_back({"side_upsample.weight", up_, "lst"});

    // ---- hooks on the side network
    model::HookSet& hooks = side_->hooks();
    const bool t5 = c.arch == model::Arch::T5, bert = c.arch == model::Arch::Bert;
    const std::string table = t5 ? "shared.weight" : bert ? "embeddings.word_embeddings.weight" : "model.embed_tokens.weight";
    // Float32 views of the frozen tables the side network computes with (a bf16 backbone keeps bf16).
    backbone_table_ = param(table).to(at::kFloat);
    // (BERT: the side then adds its own position and token-type embeddings and LayerNorm, pruned from
    // the backbone's, as it does to any word embedding.)
    hooks.add_input(t5 ? "shared" : bert ? "embeddings" : "model.embed_tokens", [this](const at::Tensor&) {
      DT_CHECK(input_ids_.defined(), "lst: the side network ran outside Lst::forward");
      const Ladder& l = ladders_[0];
      const at::Tensor embedded = at::embedding(backbone_table_, input_ids_);  // the backbone's input
      return mix(l, 0, at::linear(embedded, l.first_w, l.first_b));
    });
    for (size_t i = 0; i < ladders_.size(); ++i) {
      const Ladder& l = ladders_[i];
      for (size_t j = 0; j + 1 < l.kept.size(); ++j) {
        hooks.add_output(l.blocks + std::to_string(j) + ".block_out",
                         [this, i, j](const at::Tensor& h, const at::Tensor&) { return mix(ladders_[i], j + 1, h); });
      }
    }
    if (t5) attach_t5_decoder_input(sc, side_params.at("decoder.block.0.layer.0.layer_norm.weight"));

    if (bert) {
      // BERT's head is pooler -> classifier: the side's own pooler (pruned, trained), then the backbone's
      // classifier through Up: classifier(Up(p)) == (W · Up) p + b.
      head_ = param("classifier.weight");
      head_bias_ = param("classifier.bias");
      hooks.set_weight("classifier.weight", [this](const at::Tensor&) { return at::matmul(head_, up_); });
      hooks.set_weight("classifier.bias", [this](const at::Tensor&) { return head_bias_; });
    } else if (!t5 && num_labels > 0) {
      // score(Up(h)) == (score · Up)(h): the trained task head of the backbone, reached through Up.
      head_ = param("score.weight");
      hooks.set_weight("score.weight", [this](const at::Tensor&) { return at::matmul(head_, up_); });
    } else {
      const bool tied = c.tie_word_embeddings;
      head_ = param(tied ? table : "lm_head.weight").to(at::kFloat);
      const double scale = t5 && tied ? std::pow(static_cast<double>(d), -0.5) : 1.0;
      hooks.add_output("lm_head", [this, scale](const at::Tensor&, const at::Tensor& x) {
        at::Tensor h = at::linear(x, up_);
        if (scale != 1.0) h = h * scale;
        return at::linear(h, head_);
      });
    }
    return out;
  }

  model::ForwardResult forward(model::Backbone& backbone, const model::Batch& batch,
                               const model::ForwardOptions& options) override {
    DT_CHECK(side_ != nullptr, "lst: forward() before attach()");
    if (!checked_alone_) {
      check_alone(backbone);
      checked_alone_ = true;
    }
    // ---- the backbone, without autograd: none of its activations are kept
    {
      c10::NoGradGuard no_grad;
      hidden_ = backbone.forward(batch, {/*return_hidden_states=*/true}).hidden_states;
    }
    DT_CHECK(static_cast<int64_t>(hidden_.size()) == hidden_count_,
             fmt::format("lst: the backbone returned {} hidden states, expected {}", hidden_.size(), hidden_count_));
    if (backbone.reads_label_words() && side_->label_token_ids() != backbone.label_token_ids()) {
      side_->set_label_token_ids(backbone.label_token_ids());  // the side network scores the same words
    }
    // ---- the side network, with autograd (dropout while gradients are on, i.e. while training)
    side_->set_training(c10::GradMode::is_enabled());
    input_ids_ = batch.input_ids.to(at::kLong);
    if (ladders_.size() == 2) table_ = at::linear(backbone_table_, ladders_[1].first_w, ladders_[1].first_b);
    model::ForwardResult out;
    try {
      out = side_->forward(batch, options);
    } catch (...) {
      release();
      throw;
    }
    release();
    return out;
  }

  // The side network is built and pruned on the host; its trainable tensors moved with the others,
  // its frozen tables (and anything else it registered) follow here.
  void to(const c10::Device& device) override {
    if (side_) model::backbone_to(*side_, device);
  }

  std::string describe() const override {
    std::vector<std::string> drop;
    for (int64_t i : options_.drop) drop.push_back(std::to_string(i));
    return fmt::format("lst(r={},drop={},gate_temperature={},prune={})", options_.r, boost::algorithm::join(drop, ","),
                       options_.gate_temperature, options_.prune);
  }

 private:
  // The backbone weight a side weight is pruned from: side layer j of a stack is backbone layer
  // kept[j]; T5's relative position table lives in block 0 of each stack.
  std::string backbone_name(const std::string& side_name) const {
    for (const Ladder& l : ladders_) {
      if (!starts_with(side_name, l.blocks)) continue;
      const size_t start = l.blocks.size(), dot = side_name.find('.', start);
      const size_t j = std::stoul(side_name.substr(start, dot - start));
      const int64_t k = ends_with(side_name, "relative_attention_bias.weight") ? 0 : l.kept.at(j);
      return l.blocks + std::to_string(k) + side_name.substr(dot);
    }
    return side_name;
  }

  // Gated ladder connection j of `l`: mu * s + (1 - mu) * Down_j(backbone block output kept[j]).
  at::Tensor mix(const Ladder& l, size_t j, const at::Tensor& s) const {
    const at::Tensor& hb = hidden_.at(l.hidden_offset + l.kept[j]);
    const at::Tensor mu = at::sigmoid(l.gates[j] / options_.gate_temperature);
    return mu * s + (1 - mu) * at::linear(hb, l.down_w[j], l.down_b[j]);
  }

  // T5's decoder consults no input hook, so side decoder block 0 receives its mixed input m = mix(x)
  // through the two sites that read its input x: the first norm returns norm(m), and m - x is added
  // to the self-attention output, so that the residual stream is x + attn + (m - x) = m + attn.
  void attach_t5_decoder_input(const model::ModelConfig& sc, at::Tensor norm_weight) {
    model::HookSet& hooks = side_->hooks();
    hooks.set_weight("shared.weight", [this](const at::Tensor&) {
      DT_CHECK(table_.defined(), "lst: the side network ran outside Lst::forward");
      return table_;
    });
    const std::string layer = "decoder.block.0.layer.0.";
    const double eps = sc.norm_eps;
    hooks.add_output(layer + "layer_norm.ln", [this, norm_weight, eps](const at::Tensor&, const at::Tensor& x) {
      const at::Tensor m = mix(ladders_[1], 0, x);
      decoder_shift_ = m - x;
      return norm_weight * (m * at::rsqrt(m.pow(2).mean(-1, /*keepdim=*/true) + eps));
    });
    hooks.add_output(layer + "SelfAttention.attn_out", [this](const at::Tensor& a, const at::Tensor&) {
      DT_CHECK(decoder_shift_.defined(), "lst: side decoder block 0 ran its attention before its norm");
      return a + decoder_shift_;
    });
  }

  void release() {
    hidden_.clear();
    input_ids_ = table_ = at::Tensor();
    decoder_shift_ = at::Tensor();
  }

  // Nothing else may hook or train the backbone: it runs without autograd here.
  static void check_alone(const model::Backbone& backbone) {
    const std::string combine = " (--method lst runs the backbone without autograd and combines with no other method)";
    DT_CHECK(backbone.hooks().empty(), std::string("lst: another method hooks the backbone") + combine);
    for (const auto& [name, t] : backbone.named_parameters()) {
      if (model::is_task_head(name)) continue;  // task heads train
      DT_CHECK(!t.requires_grad(), "lst: another method trains the backbone's '" + name + "'" + combine);
    }
  }

  LstOptions options_;
  std::unique_ptr<model::Backbone> side_;
  std::vector<Ladder> ladders_;
  at::Tensor up_, head_, head_bias_, backbone_table_;
  int64_t hidden_count_ = 0;  // block outputs the backbone returns per forward
  bool checked_alone_ = false;
  // Per forward: the backbone's block outputs, the input ids, T5's side embedding table and decoder
  // input shift.
  std::vector<at::Tensor> hidden_;
  at::Tensor input_ids_, table_, decoder_shift_;
};

LstOptions parse_options(const OptionValues& values) {
  LstOptions o;
  o.r = values.get<int64_t>("lst.r");
  o.gate_temperature = values.get<double>("lst.gate-temperature");
  o.prune = values.get<std::string>("lst.prune");
  const std::string drop = values.get<std::string>("lst.drop");
  if (!drop.empty()) {
    std::vector<std::string> parts;
    boost::split(parts, drop, boost::is_any_of(","));
    for (const auto& p : parts) {
      size_t used = 0;
      int64_t i = -1;
      try {
        i = std::stoll(p, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != p.size()) throw_usage_error("--lst.drop: '" + p + "' is not a layer index");
      o.drop.push_back(i);
    }
  }
  if (o.r <= 0) throw_usage_error("--lst.r must be positive, got " + std::to_string(o.r));
  if (!(o.gate_temperature > 0)) throw_usage_error("--lst.gate-temperature must be positive");
  if (o.prune != "magnitude" && o.prune != "random") {
    throw_usage_error("--lst.prune must be magnitude or random, got '" + o.prune + "'");
  }
  return o;
}

}  // namespace

void register_lst(Registry& registry) {
  registry.add({"lst", "Ladder Side Tuning: a pruned side network fed by the frozen backbone's layers",
                {
                 {"lst.r", int64_t{8},
                  "reduction factor: the side network has d_model, d_ff and d_kv divided by r"},
                 {"lst.drop", std::string(""),
                  "comma-separated backbone layers without a side layer (t5-base paper: 0,4,8)"},
                 {"lst.gate-temperature", double{0.1},
                  "T of the ladder gates mu = sigmoid(alpha / T)"},
                 {"lst.prune", std::string("magnitude"),
                  "side initialization: magnitude (pruned from the backbone by |W|) or random"},
                },
                [](const OptionValues& values) { return std::make_unique<Lst>(parse_options(values)); }});
}

}  // namespace dt::peft
