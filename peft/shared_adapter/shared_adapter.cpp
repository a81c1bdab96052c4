// peft/shared_adapter — VL-Adapter's (Sung et al., CVPR 2022) adapters for multi-task runs: one set
// of Houlsby-placed adapters for every task, or per-task adapters that share their down projection.
//
//   --shared_adapter.share all    "single adapter": one bottleneck per site, trained by every task's
//                                 batches (VL-Adapter's most parameter-efficient variant). Tensors and
//                                 names are Houlsby's, "<site>.adapter.{down,up}.{weight,bias}".
//   --shared_adapter.share down   "half-shared": the down projection is shared across tasks, each task
//                                 has its own up projection, "<site>.adapter.up.<task>.{weight,bias}";
//                                 a batch of task t runs h + up_t(act(down(h))) (HookSet::task()).
//
// Placement, initialization and activation are Houlsby's (peft/houlsby, adapter.h houlsby_sites): after
// every self-attention and every FFN, down ~ N(0, 1e-2²) truncated, up and biases zero (identity at
// step 0), ReLU. Every task's up projection starts from zero, so with one task both variants are
// exactly `houlsby` with the same seed (tests/peft/test_multitask_methods.cpp). The bottleneck
// defaults to Houlsby's 64 here; VL-Adapter sizes it by a reduction factor of d_model (theirs: 4 to 16),
// i.e. --shared_adapter.bottleneck d/r.
// Trainable per task: all: the whole set / T; down: the down projections / T + one up set.
#include <ATen/ATen.h>

#include <memory>

#include "peft/adapter/adapter.h"
#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

enum class Share { All, Down };

struct SharedAdapterOptions {
  int64_t bottleneck = 64;
  adapter::Activation activation = adapter::Activation::Relu;
  Share share = Share::All;
};

class SharedAdapter final : public Method {
 public:
  explicit SharedAdapter(SharedAdapterOptions options) : options_(options) {}
  std::string name() const override { return "shared_adapter"; }
  void set_tasks(const std::vector<std::string>& names) override { tasks_ = names; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    if (options_.share == Share::All) {
      return adapter::sequential_plan(adapter::houlsby_sites(config), options_.bottleneck);
    }
    std::vector<model::TensorMeta> out;
    const int64_t m = options_.bottleneck;
    for (const auto& s : adapter::houlsby_sites(config)) {
      const std::string module = s.name + ".adapter";
      out.push_back({module + ".down.weight", {m, s.out_features}});
      out.push_back({module + ".down.bias", {m}});
      for (const auto& task : tasks_) {
        out.push_back({module + ".up." + task + ".weight", {s.out_features, m}});
        out.push_back({module + ".up." + task + ".bias", {s.out_features}});
      }
    }
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    const auto sites = adapter::houlsby_sites(backbone.config());
    if (options_.share == Share::All) {
      return adapter::sequential_attach(backbone, sites, options_.bottleneck, options_.activation, name());
    }
    std::vector<Trainable> out;
    const adapter::Activation act = options_.activation;
    const model::HookSet* hooks = &backbone.hooks();
    const auto task_names = tasks_;
    for (const auto& s : sites) {
      // The same draws as houlsby's make_bottleneck for the shared down projection: with one task the
      // tensors (and so the run) equal houlsby's bit for bit.
      const adapter::Bottleneck shared = adapter::make_bottleneck(s.out_features, options_.bottleneck,
                                                                  adapter::Init::Houlsby);
      std::vector<at::Tensor> up_weights, up_biases;
      up_weights.push_back(shared.up_weight);
      up_biases.push_back(shared.up_bias);
      for (size_t t = 1; t < task_names.size(); ++t) {
        up_weights.push_back(at::zeros_like(shared.up_weight).requires_grad_(true));
        up_biases.push_back(at::zeros_like(shared.up_bias).requires_grad_(true));
      }
      const std::string site = s.name;
      backbone.hooks().add_output(site, [=](const at::Tensor& h, const at::Tensor&) {
        const int64_t task = hooks->task();
        DT_CHECK(task >= 0 && task < static_cast<int64_t>(up_weights.size()),
                 "shared_adapter: batch of task " + std::to_string(task) + " in a run of " +
                     std::to_string(up_weights.size()) + " tasks");
        adapter::Bottleneck b = shared;
        b.up_weight = up_weights[task];
        b.up_bias = up_biases[task];
        return h + b.forward(h, act);
      });
      const std::string module = site + ".adapter";
      out.push_back({module + ".down.weight", shared.down_weight, name()});
      out.push_back({module + ".down.bias", shared.down_bias, name()});
      for (size_t t = 0; t < task_names.size(); ++t) {
        out.push_back({module + ".up." + task_names[t] + ".weight", up_weights[t], name()});
        out.push_back({module + ".up." + task_names[t] + ".bias", up_biases[t], name()});
      }
    }
    return out;
  }

  std::string describe() const override {
    return "shared_adapter(bottleneck=" + std::to_string(options_.bottleneck) +
           ",activation=" + adapter::activation_name(options_.activation) +
           ",share=" + (options_.share == Share::All ? "all" : "down") + ")";
  }

 private:
  SharedAdapterOptions options_;
  std::vector<std::string> tasks_ = {"default"};
};

}  // namespace

void register_shared_adapter(Registry& registry) {
  registry.add({"shared_adapter",
                "VL-Adapter's shared adapters for multi-task runs: one Houlsby set for all tasks, or per-task up "
                "projections over a shared down projection",
                {
                 {"shared_adapter.bottleneck", int64_t{64}, "adapter bottleneck size m"},
                 {"shared_adapter.activation", std::string("relu"), "adapter nonlinearity: relu, gelu, tanh, silu"},
                 {"shared_adapter.share", std::string("all"),
                  "all (one adapter set for every task) | down (half-shared: shared down projection, an up "
                  "projection per task)"},
                },
                [](const OptionValues& values) {
                  SharedAdapterOptions o;
                  o.bottleneck = values.get<int64_t>("shared_adapter.bottleneck");
                  if (o.bottleneck <= 0) {
                    throw_usage_error("--shared_adapter.bottleneck must be positive, got " +
                                      std::to_string(o.bottleneck));
                  }
                  o.activation = adapter::parse_activation("shared_adapter.activation",
                                                           values.get<std::string>("shared_adapter.activation"));
                  const std::string share = values.get<std::string>("shared_adapter.share");
                  if (share == "all") {
                    o.share = Share::All;
                  } else if (share == "down") {
                    o.share = Share::Down;
                  } else {
                    throw_usage_error("--shared_adapter.share must be all or down, got '" + share + "'");
                  }
                  return std::make_unique<SharedAdapter>(o);
                }});
}

}  // namespace dt::peft
