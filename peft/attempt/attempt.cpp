// peft/attempt — ATTEMPT (Asai et al., EMNLP 2022, "ATTEMPT: Parameter-Efficient Multi-task Tuning via
// Attentional Mixtures of Soft Prompts"): frozen source prompts, learned on other tasks by prompt
// tuning, and a new target prompt per task are mixed per input by a small attention module; the mixture
// is prepended to the embedded input as a prompt-tuning prompt is (the input hook at the embedding site).
//
// For an input X (embedded [T, d]) of task τ, with the sources P_1..P_k and the target P_τ = P_{k+1}:
//   x̂      = max-pool_T(X)                                                  [d]
//   h      = LayerNorm( W_up · SiLU( W_down · x̂ ) )                        [d]   (W_down [r, d], no biases)
//   a_j    = softmax_j( h · max-pool_l(P_j) / temperature ),  j = 1..k+1
//   P_inst = P_τ + Σ_j a_j P_j                                              [l, d], prepended to X
// as the reference code's "sub" attention does (AkariAsai/ATTEMPT, third_party/models/t5/modeling_t5.py,
// T5Stack.forward): the target takes part in the mixture and is added once more. The attention module
// is shared by every task (the paper's multi-task variant, the code's shared_attn); each task has its own
// target prompt. With no sources the mixture is the target alone (a = 1): P_inst = 2 · P_τ.
//
// Defaults, from the paper and its code: prompt length 100 (configs/attempt/*.json prefix_dim), the
// projection r = 100 (the code's attn_W_down), SiLU, temperature d_model · e (the paper's T = d · exp(1);
// the configs' 2087 on t5-base), nn.LayerNorm's eps 1e-5. Sources: `--attempt.sources a.h5,b.h5`, deltatune
// checkpoints of prompt-tuning runs whose trainable "prompt.embedding" [length, d_model] is read
// (dist/checkpoint.h); they stay frozen. Initialization as the code's: every target prompt starts as a
// copy of the first source (run_seq2seq.py, update_prefix_weights_multi), or, without sources, as
// sampled vocabulary (init_prefix_from_vocab, the same draw as peft/prompt); the attention's linear
// layers nn.Linear's U(±1/sqrt(fan_in)), the layer norm 1 and 0.
// Simplifications: the max-pooling of the input runs over every position, padding included, because
// the input hook sees the embedded sequence without its mask (the reference code pools the same way, over
// inputs padded to the maximum length). The attention module starts from its initialization rather
// than from the code's optional pre-trained one (attn_pretrain_nlu). Only the encoder (T5) or the input
// (Llama, BERT) gets the prompt, as in the code (T5Stack: append_attn_prefix only when not is_decoder).
// The sources are not trainables, so a checkpoint does not hold them: eval and resume read the same
// --attempt.sources files again.
// Not identity at initialization: the prompt changes every position's attention.
// Trainables (plan() order): "attempt.target_prompt.<task>" [l, d] per task, "attempt.attn_W_down.weight"
// [r, d], "attempt.attn_W_up.weight" [d, r], "attempt.layer_norm.{weight,bias}" [d].
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <sstream>

#include "dist/checkpoint.h"
#include "model/device.h"
#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

constexpr int64_t kCommonTokens = 5000;  // peft/prompt's sampled-vocabulary pool
constexpr double kLayerNormEps = 1e-5;   // nn.LayerNorm's default
const char* const kSourceTensor = "prompt.embedding";

struct AttemptOptions {
  int64_t length = 100;
  int64_t projection = 100;
  double temperature = 0;  // 0: d_model · e
  std::vector<std::string> sources;
};

model::SiteInfo embedding_site(const model::ModelConfig& config) {
  for (const auto& s : model::describe_sites(config)) {
    if (s.kind == model::SiteKind::Embedding) return s;
  }
  DT_FAIL("attempt: model '" + config.name + "' has no embedding site");
}

std::string shape_text(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// The trained prompt of one source checkpoint, float32, checked against the target's shape.
at::Tensor read_source_prompt(const std::string& path, int64_t length, int64_t d) {
  if (!std::filesystem::is_regular_file(path)) {
    throw_usage_error("--attempt.sources: source prompt checkpoint '" + path + "' does not exist");
  }
  dist::CheckpointState state;
  try {
    state = dist::read_checkpoint(path);
  } catch (const Error& e) {
    throw_usage_error("--attempt.sources: cannot read '" + path + "' as a deltatune checkpoint: " + e.what());
  }
  for (const auto& [name, tensor] : state.trainables) {
    if (name != kSourceTensor) continue;
    if (tensor.dim() != 2 || tensor.size(0) != length || tensor.size(1) != d) {
      throw_usage_error("--attempt.sources: the prompt of '" + path + "' has shape " + shape_text(tensor.sizes()) +
                        ", the target prompt " + shape_text({length, d}) + " (--attempt.length " +
                        std::to_string(length) + ", d_model " + std::to_string(d) + ")");
    }
    return tensor.to(at::kFloat).contiguous();
  }
  throw_usage_error("--attempt.sources: checkpoint '" + path + "' has no trainable '" + kSourceTensor +
                    "' (sources are checkpoints of --method prompt runs)");
}

class Attempt final : public Method {
 public:
  explicit Attempt(AttemptOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "attempt"; }
  void set_tasks(const std::vector<std::string>& names) override { tasks_ = names; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    const int64_t d = embedding_site(config).out_features, l = options_.length, r = options_.projection;
    std::vector<model::TensorMeta> out;
    for (const auto& task : tasks_) out.push_back({"attempt.target_prompt." + task, {l, d}});
    out.push_back({"attempt.attn_W_down.weight", {r, d}});
    out.push_back({"attempt.attn_W_up.weight", {d, r}});
    out.push_back({"attempt.layer_norm.weight", {d}});
    out.push_back({"attempt.layer_norm.bias", {d}});
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    const model::SiteInfo site = embedding_site(backbone.config());
    const int64_t d = site.out_features, l = options_.length, r = options_.projection;
    const int64_t num_tasks = static_cast<int64_t>(tasks_.size());

    // The frozen sources, stacked [k, l, d] (k = 0 without sources), kept for to().
    std::vector<at::Tensor> sources;
    for (const auto& path : options_.sources) sources.push_back(read_source_prompt(path, l, d));
    sources_ = sources.empty() ? at::zeros({0, l, d}, at::kFloat) : at::stack(sources);

    std::vector<at::Tensor> targets;
    if (!sources.empty()) {
      for (int64_t t = 0; t < num_tasks; ++t) targets.push_back(sources[0].clone().requires_grad_(true));
    } else {
      at::Tensor vocabulary;
      for (const auto& [name, tensor] : backbone.named_parameters()) {
        if (name == site.weight) vocabulary = tensor;
      }
      DT_CHECK(vocabulary.defined(), "attempt: the backbone has no parameter '" + site.weight + "'");
      const int64_t common = std::min<int64_t>(vocabulary.size(0), kCommonTokens);
      for (int64_t t = 0; t < num_tasks; ++t) {
        const at::Tensor ids = at::randint(common, {l}, at::kLong).to(vocabulary.device());
        targets.push_back(vocabulary.detach().index_select(0, ids).to(at::kFloat).clone().requires_grad_(true));
      }
    }
    auto linear_init = [](int64_t out, int64_t in) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      return at::empty({out, in}, at::kFloat).uniform_(-bound, bound).requires_grad_(true);
    };
    const at::Tensor down = linear_init(r, d), up = linear_init(d, r);
    const at::Tensor ln_w = at::ones({d}, at::kFloat).requires_grad_(true);
    const at::Tensor ln_b = at::zeros({d}, at::kFloat).requires_grad_(true);

    const double temperature =
        options_.temperature > 0 ? options_.temperature : static_cast<double>(d) * std::exp(1.0);
    const at::Tensor frozen = sources_;
    const model::HookSet* hooks = &backbone.hooks();
    backbone.hooks().add_input(site.name, [=](const at::Tensor& embedded) {
      const int64_t task = hooks->task();
      DT_CHECK(task >= 0 && task < num_tasks, "attempt: batch of task " + std::to_string(task) + " in a run of " +
                                                  std::to_string(num_tasks) + " tasks");
      const at::Tensor& target = targets[task];
      const at::Tensor pooled_input = std::get<0>(embedded.to(at::kFloat).max(1));  // [B, d]
      const at::Tensor query = at::layer_norm(at::linear(at::silu(at::linear(pooled_input, down)), up), {d}, ln_w,
                                              ln_b, kLayerNormEps);
      const at::Tensor prompts = at::cat({frozen, target.unsqueeze(0)});  // [k + 1, l, d]
      const at::Tensor pooled_prompts = std::get<0>(prompts.max(1));      // [k + 1, d]
      const at::Tensor weights = at::softmax(at::matmul(query, pooled_prompts.t()) / temperature, -1);  // [B, k + 1]
      const at::Tensor instance = at::einsum("bp,pld->bld", {weights, prompts}) + target;               // [B, l, d]
      return at::cat({instance.to(embedded.scalar_type()), embedded}, 1);
    });

    std::vector<Trainable> out;
    for (int64_t t = 0; t < num_tasks; ++t) out.push_back({"attempt.target_prompt." + tasks_[t], targets[t], name()});
    out.push_back({"attempt.attn_W_down.weight", down, name()});
    out.push_back({"attempt.attn_W_up.weight", up, name()});
    out.push_back({"attempt.layer_norm.weight", ln_w, name()});
    out.push_back({"attempt.layer_norm.bias", ln_b, name()});
    return out;
  }

  void to(const c10::Device& device) override {
    if (sources_.defined()) model::move_tensor(sources_, device);  // the hook holds the same tensor
  }

  std::string describe() const override {
    std::string sources;
    for (const auto& s : options_.sources) sources += (sources.empty() ? "" : ",") + s;
    std::ostringstream temperature;
    temperature << options_.temperature;
    return "attempt(length=" + std::to_string(options_.length) + ",projection=" + std::to_string(options_.projection) +
           ",temperature=" + (options_.temperature > 0 ? temperature.str() : std::string("d*e")) + ",sources=[" +
           sources + "])";
  }

 private:
  AttemptOptions options_;
  std::vector<std::string> tasks_ = {"default"};
  at::Tensor sources_;
};

std::vector<std::string> split_sources(const std::string& text) {
  std::vector<std::string> out;
  if (text.empty()) return out;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    const auto first = part.find_first_not_of(" \t"), last = part.find_last_not_of(" \t");
    if (first == std::string::npos) throw_usage_error("--attempt.sources '" + text + "': empty file name");
    out.push_back(part.substr(first, last - first + 1));
  }
  if (text.back() == ',') throw_usage_error("--attempt.sources '" + text + "': empty file name");
  return out;
}

}  // namespace

void register_attempt(Registry& registry) {
  registry.add({"attempt",
                "ATTEMPT: an attention module mixes frozen source prompts and a per-task target prompt per input",
                {
                 {"attempt.length", int64_t{100}, "prompt length l (target and source prompts)"},
                 {"attempt.projection", int64_t{100}, "down-projection size r of the attention module"},
                 {"attempt.temperature", 0.0, "softmax temperature of the attention; 0: d_model * e (the paper's)"},
                 {"attempt.sources", std::string(""),
                  "source prompts: comma-separated checkpoints (.h5) of --method prompt runs, frozen"},
                },
                [](const OptionValues& values) {
                  AttemptOptions o;
                  o.length = values.get<int64_t>("attempt.length");
                  o.projection = values.get<int64_t>("attempt.projection");
                  if (o.length <= 0 || o.projection <= 0) {
                    throw_usage_error("--attempt.length and --attempt.projection must be positive, got " +
                                      std::to_string(o.length) + " and " + std::to_string(o.projection));
                  }
                  o.temperature = values.get<double>("attempt.temperature");
                  if (!(o.temperature >= 0) || std::isinf(o.temperature)) {
                    throw_usage_error("--attempt.temperature must be positive (or 0: d_model * e), got " +
                                      std::to_string(o.temperature));
                  }
                  o.sources = split_sources(values.get<std::string>("attempt.sources"));
                  // A missing file is a typo: say so before any model is loaded.
                  for (const auto& path : o.sources) {
                    if (!std::filesystem::is_regular_file(path)) {
                      throw_usage_error("--attempt.sources: source prompt checkpoint '" + path + "' does not exist");
                    }
                  }
                  return std::make_unique<Attempt>(o);
                }});
}

}  // namespace dt::peft
