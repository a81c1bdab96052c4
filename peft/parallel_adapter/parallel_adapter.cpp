// peft/parallel_adapter — He et al. (2022)'s scaled parallel adapter at the FFN:
// h_ffn_out + s · up(relu(down(x))), with x the FFN's input (the ".ffn_out" hook's x).
//
// Defaults as the paper's best FFN setting (bottleneck 512, s = 4). Initialization as their code's
// "lora" option: down U(±1/sqrt(d)) (nn.Linear's kaiming_uniform(a = sqrt(5))), up and biases zero,
// so the model is unchanged at step 0. Trainables: "<site>.parallel_adapter.{down,up}.{weight,bias}".

#include "peft/adapter/adapter.h"
#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

class ParallelAdapter final : public Method {
 public:
  explicit ParallelAdapter(adapter::ParallelOptions options) : options_(options) {}
  std::string name() const override { return "parallel_adapter"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    return adapter::parallel_plan(config, options_);
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    return adapter::parallel_attach(backbone, options_, "parallel_adapter");
  }

  std::string describe() const override {
    return "parallel_adapter(bottleneck=" + std::to_string(options_.bottleneck) +
           ",scale=" + std::to_string(options_.scale) + ")";
  }

 private:
  adapter::ParallelOptions options_;
};

}  // namespace

void register_parallel_adapter(Registry& registry) {
  registry.add({"parallel_adapter", "scaled parallel adapter (He et al.) beside every FFN",
                {
                 {"parallel_adapter.bottleneck", int64_t{512},
                  "parallel adapter bottleneck size"},
                 {"parallel_adapter.scale", double{4.0},
                  "scale s of the parallel adapter's output"},
                },
                [](const OptionValues& values) {
                  adapter::ParallelOptions o;
                  o.bottleneck = values.get<int64_t>("parallel_adapter.bottleneck");
                  o.scale = values.get<double>("parallel_adapter.scale");
                  if (o.bottleneck <= 0) {
                    throw_usage_error("--parallel_adapter.bottleneck must be positive, got " +
                                      std::to_string(o.bottleneck));
                  }
                  return std::make_unique<ParallelAdapter>(o);
                }});
}

}  // namespace dt::peft
