// peft/s3delta/method.cpp — the registered method "s3delta" (retraining a searched structure) and the
// --s3delta.* options; see s3delta.h.
//
// Defaults and where they come from (thunlp/S3Delta, NAS_global/argparser.py and scripts/S3PET-*):
//   --s3delta.alpha-lr 0.1 (alpha_learning_rate), --s3delta.alpha-clip 2.0 (clip_grad_norm), --s3delta.beta 1
//   (beta), α = 0 at init (nn.Parameter(torch.zeros(1))), --s3delta.heldout 0.5 (random_split of the training
//   set into halves), Gumbel sampling on (using_gumbel), --s3delta.lora-r 1 (structure_config/
//   mix_low_rank.json, the S3PET-M space), --s3delta.lora-alpha 16 (OpenDelta's LoraConfig), the adapter's
//   bottleneck d_model/32 (LowRankAdapter's reduction_factor 32). --s3delta.budget 0.0001 is the issue's
//   example; the paper's budgets are 0.0000348 (S3PET-M) and 0.0001389 (S3PET-L) of T5-large.
#include <fmt/format.h>

#include <cmath>
#include <optional>

#include "peft/s3delta/s3delta.h"
#include "util/error.h"

namespace dt::peft {
namespace s3delta {

SpaceOptions space_options(const OptionValues& values) {
  SpaceOptions o;
  o.lora_r = values.get<int64_t>("s3delta.lora-r");
  o.lora_alpha = values.get<double>("s3delta.lora-alpha");
  o.bottleneck = values.get<int64_t>("s3delta.bottleneck");
  o.kinds = parse_kinds("s3delta.kinds", values.get<std::string>("s3delta.kinds"));
  if (o.lora_r <= 0) throw_usage_error("--s3delta.lora-r must be positive, got " + std::to_string(o.lora_r));
  if (o.bottleneck < 0) throw_usage_error("--s3delta.bottleneck must be >= 0 (0: d_model / 32), got " +
                                          std::to_string(o.bottleneck));
  return o;
}

SearchOptions search_options(const OptionValues& values) {
  SearchOptions o;
  o.budget = values.get<double>("s3delta.budget");
  if (values.has("s3delta.budget-params")) o.budget_params = values.get<int64_t>("s3delta.budget-params");
  o.heldout = values.get<double>("s3delta.heldout");
  o.alpha_lr = values.get<double>("s3delta.alpha-lr");
  o.alpha_clip = values.get<double>("s3delta.alpha-clip");
  o.beta = values.get<double>("s3delta.beta");
  o.gumbel = !values.get<bool>("s3delta.no-gumbel");
  if (!(o.budget > 0 && o.budget <= 1)) {
    throw_usage_error(fmt::format("--s3delta.budget must be in (0, 1] (a fraction of the backbone), got {}", o.budget));
  }
  if (values.has("s3delta.budget-params") && o.budget_params <= 0) {
    throw_usage_error(fmt::format("--s3delta.budget-params must be positive, got {}", o.budget_params));
  }
  if (!(o.heldout > 0 && o.heldout < 1)) {
    throw_usage_error(fmt::format("--s3delta.heldout must be in (0, 1), got {}", o.heldout));
  }
  if (!(o.alpha_lr >= 0)) throw_usage_error(fmt::format("--s3delta.alpha-lr must be >= 0, got {}", o.alpha_lr));
  if (!(o.beta > 0)) throw_usage_error(fmt::format("--s3delta.beta must be positive, got {}", o.beta));
  return o;
}

int64_t budget_params(const SearchOptions& options, int64_t backbone_params) {
  if (options.budget_params > 0) return options.budget_params;
  return static_cast<int64_t>(std::floor(options.budget * static_cast<double>(backbone_params)));
}

}  // namespace s3delta

namespace {

class S3Delta final : public Method {
 public:
  explicit S3Delta(std::optional<s3delta::Structure> structure) : structure_(std::move(structure)) {}
  std::string name() const override { return "s3delta"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    std::vector<model::TensorMeta> out;
    for (const auto& c : s3delta::chosen_candidates(structure(), config)) {
      out.insert(out.end(), c.tensors.begin(), c.tensors.end());
    }
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    const auto chosen = s3delta::chosen_candidates(structure(), backbone.config());
    return s3delta::attach_candidates(backbone, chosen, structure().space, nullptr);
  }

  std::string describe() const override {
    if (!structure_) return "s3delta(no structure)";
    return fmt::format("s3delta(structure={},modules={},params={})", s3delta::structure_id(*structure_),
                       structure_->modules.size(), structure_->total_params());
  }

 private:
  const s3delta::Structure& structure() const {
    if (!structure_) {
      throw_usage_error("--method s3delta retrains a searched structure: give --structure FILE (written by "
                        "`deltatune search --method s3delta --out FILE`)");
    }
    return *structure_;
  }
  std::optional<s3delta::Structure> structure_;
};

}  // namespace

void register_s3delta(Registry& registry) {
  registry.add({"s3delta",
                "S3Delta: delta modules chosen by a bi-level structure search under a parameter budget "
                "(`deltatune search --method s3delta`), retrained with --structure FILE",
                {
                 {"s3delta.budget", double{1e-4},
                  "search: parameter budget of the structure, as a fraction of the backbone's parameters"},
                 {"s3delta.budget-params", int64_t{0},
                  "search: the budget in parameters (instead of --s3delta.budget)", /*has_default=*/false},
                 {"s3delta.kinds", std::string("lora,bitfit,adapter,ln"),
                  "search: candidate module kinds at every position: lora, bitfit, adapter, ln (layer-norm gain)"},
                 {"s3delta.lora-r", int64_t{1}, "search: rank of the LoRA candidates"},
                 {"s3delta.lora-alpha", double{16.0}, "search: LoRA alpha of the candidates (scale = alpha / r)"},
                 {"s3delta.bottleneck", int64_t{0}, "search: adapter candidates' bottleneck (0: d_model / 32)"},
                 {"s3delta.heldout", double{0.5},
                  "search: fraction of the training set held out for the structure (alpha) steps"},
                 {"s3delta.alpha-lr", double{0.1}, "search: AdamW learning rate of the structure parameters"},
                 {"s3delta.alpha-clip", double{2.0}, "search: clip the structure gradient's L2 norm (0: off)"},
                 {"s3delta.beta", double{1.0}, "search: temperature of the shifted global sigmoid"},
                 {"s3delta.no-gumbel", false, "search: deterministic gates (z = p) instead of sampled ones"},
                },
                [](const OptionValues& values) {
                  s3delta::space_options(values);  // checked wherever the method is named
                  s3delta::search_options(values);
                  std::optional<s3delta::Structure> structure;
                  if (values.has("s3delta.structure")) {
                    structure = s3delta::read_structure(values.get<std::string>("s3delta.structure"));
                  }
                  return std::make_unique<S3Delta>(std::move(structure));
                }});
}

}  // namespace dt::peft
