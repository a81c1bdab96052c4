// peft/houlsby — Houlsby et al. (2019) adapters: a bottleneck h + up(act(down(h))) after the
// attention block and after the FFN of every layer.
//
// Placement (adapter.h houlsby_sites): after every self-attention's output projection (".attn_out",
// before the residual add and, in BERT, before the layer norm) and after every FFN (".ffn_out"). On
// T5's decoder the cross-attention gets none, as adapter-transformers' default (cross_adapter off):
// 2 adapters per encoder and per decoder layer, 48 on t5-base.
// Initialization: the paper's near-identity (down ~ N(0, 1e-2²) truncated at 2σ) with the up
// projection zero, so the model is exactly unchanged at step 0 (the paper draws up from the same
// small normal; zero makes identity exact and costs nothing: down still gets gradients from step 1).
// The paper also trains the layer norms; here only the adapters train (compose "+bitfit" for norms).
// Trainables: "<site>.adapter.down.weight" [m, d], ".down.bias" [m], ".up.weight" [d, m], ".up.bias" [d].

#include "peft/adapter/adapter.h"
#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

struct HoulsbyOptions {
  int64_t bottleneck = 64;
  adapter::Activation activation = adapter::Activation::Relu;
};

class Houlsby final : public Method {
 public:
  explicit Houlsby(HoulsbyOptions options) : options_(options) {}
  std::string name() const override { return "houlsby"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    return adapter::sequential_plan(adapter::houlsby_sites(config), options_.bottleneck);
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    return adapter::sequential_attach(backbone, adapter::houlsby_sites(backbone.config()), options_.bottleneck,
                                      options_.activation, "houlsby");
  }

  std::string describe() const override {
    return "houlsby(bottleneck=" + std::to_string(options_.bottleneck) +
           ",activation=" + adapter::activation_name(options_.activation) + ")";
  }

 private:
  HoulsbyOptions options_;
};

}  // namespace

void register_houlsby(Registry& registry) {
  registry.add({"houlsby", "Houlsby adapters: bottleneck after every self-attention and every FFN",
                {
                 {"houlsby.bottleneck", int64_t{64},
                  "adapter bottleneck size m"},
                 {"houlsby.activation", std::string("relu"),
                  "adapter nonlinearity: relu, gelu, tanh, silu"},
                },
                [](const OptionValues& values) {
                  HoulsbyOptions o;
                  o.bottleneck = values.get<int64_t>("houlsby.bottleneck");
                  if (o.bottleneck <= 0) {
                    throw_usage_error("--houlsby.bottleneck must be positive, got " + std::to_string(o.bottleneck));
                  }
                  o.activation = adapter::parse_activation("houlsby.activation",
                                                           values.get<std::string>("houlsby.activation"));
                  return std::make_unique<Houlsby>(o);
                }});
}

}  // namespace dt::peft
