// peft/full — full fine-tuning, the baseline: every backbone weight trains (and crosses the wire).
// Merging is trivially exact: the trained weights are the backbone's own (no hook, no delta).
#include "model/device.h"
#include "peft/method.h"

namespace dt::peft {
namespace {

class Full final : public Method {
 public:
  std::string name() const override { return "full"; }
  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    return model::describe(config);
  }
  std::vector<Trainable> attach(model::Backbone& backbone) override {
    std::vector<Trainable> out;
    for (auto& [name, tensor] : backbone.named_parameters()) {
      if (model::is_task_head(name)) continue;  // the task head is added by MethodSet, after every method
      // The frozen weights may be a read-only mapping of the weights file (bf16 for a big T5): train a
      // private float32 copy (the master weights; GradSync and the optimizers work in float32).
      tensor.set_data(tensor.detach().to(at::kFloat, /*non_blocking=*/false, /*copy=*/true));
      tensor.requires_grad_(true);
      out.push_back({name, tensor, "full"});
    }
    return out;
  }
  std::string describe() const override { return "full"; }
  bool can_merge() const override { return true; }
  void merge(model::Backbone&) override {}
  void unmerge(model::Backbone&) override {}
};

}  // namespace

void register_full(Registry& registry) {
  registry.add({"full", "full fine-tuning: every backbone weight trains", {},
                [](const OptionValues&) { return std::make_unique<Full>(); }});
}

}  // namespace dt::peft
