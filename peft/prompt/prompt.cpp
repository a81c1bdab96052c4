// peft/prompt — prompt tuning (Lester et al., 2021): P trainable "soft token" embeddings prepended
// to the embedded input (T5: the encoder input; Llama, BERT: the input) through the input hook at
// the backbone's embedding site. The backbones extend the attention mask over the prepended
// positions (always attended) and, for Llama LM labels, mark them -100.
//
// Initialization: the paper's "sampled vocabulary" — each soft token is a copy of the embedding of a
// token drawn uniformly from the 5,000 most common ones. SentencePiece and BPE vocabularies are
// roughly ordered by frequency, so the first min(vocab, 5000) ids stand in for "most common". The
// draw uses torch's global generator, so a seed (--train.seed) fixes it on every rank.
// Not identity at initialization: the prepended tokens change every position's attention.
// Trainable: "prompt.embedding" [P, d_model].
#include <ATen/ATen.h>

#include <algorithm>

#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

constexpr int64_t kCommonTokens = 5000;

struct PromptOptions {
  int64_t length = 20;
};

model::SiteInfo embedding_site(const model::ModelConfig& config) {
  for (const auto& s : model::describe_sites(config)) {
    if (s.kind == model::SiteKind::Embedding) return s;
  }
  DT_FAIL("prompt tuning: model '" + config.name + "' has no embedding site");
}

class Prompt final : public Method {
 public:
  explicit Prompt(PromptOptions options) : options_(options) {}
  std::string name() const override { return "prompt"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    return {{"prompt.embedding", {options_.length, embedding_site(config).out_features}}};
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    const model::SiteInfo site = embedding_site(backbone.config());
    at::Tensor vocabulary;
    for (const auto& [name, tensor] : backbone.named_parameters()) {
      if (name == site.weight) vocabulary = tensor;
    }
    DT_CHECK(vocabulary.defined(), "prompt tuning: the backbone has no parameter '" + site.weight + "'");
    const int64_t common = std::min<int64_t>(vocabulary.size(0), kCommonTokens);
    const at::Tensor ids = at::randint(common, {options_.length}, at::kLong);
    const at::Tensor prompt =
        vocabulary.detach().index_select(0, ids.to(vocabulary.device())).to(at::kFloat).clone().requires_grad_(true);
    backbone.hooks().add_input(site.name, [prompt](const at::Tensor& embedded) {
      const at::Tensor soft = prompt.to(embedded.scalar_type()).unsqueeze(0).expand(
          {embedded.size(0), prompt.size(0), prompt.size(1)});
      return at::cat({soft, embedded}, 1);
    });
    return {{"prompt.embedding", prompt, "prompt"}};
  }

  std::string describe() const override { return "prompt(length=" + std::to_string(options_.length) + ")"; }

 private:
  PromptOptions options_;
};

}  // namespace

void register_prompt(Registry& registry) {
  registry.add({"prompt", "prompt tuning: soft tokens prepended to the (encoder) input",
                {
                 {"prompt.length", int64_t{20},
                  "number of soft prompt tokens"},
                },
                [](const OptionValues& values) {
                  PromptOptions o;
                  o.length = values.get<int64_t>("prompt.length");
                  if (o.length <= 0) {
                    throw_usage_error("--prompt.length must be positive, got " + std::to_string(o.length));
                  }
                  return std::make_unique<Prompt>(o);
                }});
}

}  // namespace dt::peft
