// peft/pfeiffer — Pfeiffer et al. (AdapterFusion, 2021) adapters: the Houlsby bottleneck after the
// FFN only (".ffn_out" of every layer, before the residual add), half the adapters of Houlsby's
// placement for nearly the same quality in their study.
//
// Pfeiffer's configuration also moves the adapter's residual around the layer norm; the backbones
// expose no site between the FFN's residual add and its norm, so the adapter sits at the FFN output
// with its own skip connection, as the Houlsby adapter does. Initialization and names as houlsby
// (up projection zero: the model is unchanged at step 0).

#include "peft/adapter/adapter.h"
#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

struct PfeifferOptions {
  int64_t bottleneck = 64;
  adapter::Activation activation = adapter::Activation::Relu;
};

class Pfeiffer final : public Method {
 public:
  explicit Pfeiffer(PfeifferOptions options) : options_(options) {}
  std::string name() const override { return "pfeiffer"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    return adapter::sequential_plan(adapter::ffn_sites(config), options_.bottleneck);
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    return adapter::sequential_attach(backbone, adapter::ffn_sites(backbone.config()), options_.bottleneck,
                                      options_.activation, "pfeiffer");
  }

  std::string describe() const override {
    return "pfeiffer(bottleneck=" + std::to_string(options_.bottleneck) +
           ",activation=" + adapter::activation_name(options_.activation) + ")";
  }

 private:
  PfeifferOptions options_;
};

}  // namespace

void register_pfeiffer(Registry& registry) {
  registry.add({"pfeiffer", "Pfeiffer adapters: bottleneck after every FFN",
                {
                 {"pfeiffer.bottleneck", int64_t{64},
                  "adapter bottleneck size m"},
                 {"pfeiffer.activation", std::string("relu"),
                  "adapter nonlinearity: relu, gelu, tanh, silu"},
                },
                [](const OptionValues& values) {
                  PfeifferOptions o;
                  o.bottleneck = values.get<int64_t>("pfeiffer.bottleneck");
                  if (o.bottleneck <= 0) {
                    throw_usage_error("--pfeiffer.bottleneck must be positive, got " + std::to_string(o.bottleneck));
                  }
                  o.activation = adapter::parse_activation("pfeiffer.activation",
                                                           values.get<std::string>("pfeiffer.activation"));
                  return std::make_unique<Pfeiffer>(o);
                }});
}

}  // namespace dt::peft
