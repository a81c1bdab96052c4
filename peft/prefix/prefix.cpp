// peft/prefix — prefix tuning (Li & Liang, 2021): P trainable key/value vectors prepended in every
// attention, visible to every query (no causal or padding mask, no position bias or rotary).
//
// Reparameterization, as the prefix-tuning code does during training: per group of attentions (T5:
// encoder self, decoder self, decoder cross — the code's wte_enc / wte / wte2; BERT: encoder; Llama:
// decoder) an embedding E [P, d_model] feeds Linear(d_model, h) · tanh · Linear(h, 2 · layers · kv_dim),
// whose output is cut into each attention's keys and values [B, kv_heads, P, head_dim] (Llama: the
// GQA kv heads, which the backbone repeats). Trainable: E and the MLP (adapter.h prefix_plan). After
// training the MLP can be folded: the prefixes are a fixed function of the trainables, so evaluating
// the MLP once gives P · 2 · kv_dim values per attention to keep instead (the count papers report).
// Not identity at initialization: the prefix changes every attention's output from step 0.

#include "peft/adapter/adapter.h"
#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

class Prefix final : public Method {
 public:
  explicit Prefix(adapter::PrefixOptions options) : options_(options) {}
  std::string name() const override { return "prefix"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    return adapter::prefix_plan(config, options_);
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    return adapter::prefix_attach(backbone, options_, "prefix");
  }

  std::string describe() const override {
    return "prefix(length=" + std::to_string(options_.length) + ",hidden=" + std::to_string(options_.hidden) + ")";
  }

 private:
  adapter::PrefixOptions options_;
};

}  // namespace

void register_prefix(Registry& registry) {
  registry.add({"prefix", "prefix tuning: trainable keys/values in every attention (MLP-reparameterized)",
                {
                 {"prefix.length", int64_t{30},
                  "prefix length P per attention"},
                 {"prefix.hidden", int64_t{512},
                  "hidden size of the reparameterization MLP"},
                },
                [](const OptionValues& values) {
                  adapter::PrefixOptions o;
                  o.length = values.get<int64_t>("prefix.length");
                  o.hidden = values.get<int64_t>("prefix.hidden");
                  if (o.length <= 0 || o.hidden <= 0) {
                    throw_usage_error("--prefix.length and --prefix.hidden must be positive, got " +
                                      std::to_string(o.length) + " and " + std::to_string(o.hidden));
                  }
                  return std::make_unique<Prefix>(o);
                }});
}

}  // namespace dt::peft
