// peft/mam — the Mix-And-Match adapter (He et al., 2022): prefix tuning at every attention plus the
// scaled parallel adapter at every FFN, the paper's best combination in its unified view.
//
// Built from the shared pieces (adapter.h): prefixes of length --mam.prefix-length (30, the paper's
// l = 30) reparameterized by the prefix MLP (--mam.prefix-hidden), and the parallel FFN adapter
// (--mam.bottleneck 512, --mam.scale 4). Trainables are named as prefix's and parallel_adapter's
// ("prefix.<group>.*", "<site>.parallel_adapter.*"), prefix tensors first. The paper's parameter
// count (6.7% of BART-large) counts the prefixes folded (P · 2 · kv_dim per attention); `plan` counts
// what trains, the MLP included. Not identity at initialization (the prefix changes attention).

#include "peft/adapter/adapter.h"
#include "peft/method.h"
#include "util/error.h"

namespace dt::peft {
namespace {

struct MamOptions {
  adapter::PrefixOptions prefix;
  adapter::ParallelOptions parallel;
};

class Mam final : public Method {
 public:
  explicit Mam(MamOptions options) : options_(options) {}
  std::string name() const override { return "mam"; }

  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override {
    auto out = adapter::prefix_plan(config, options_.prefix);
    for (auto& meta : adapter::parallel_plan(config, options_.parallel)) out.push_back(std::move(meta));
    return out;
  }

  std::vector<Trainable> attach(model::Backbone& backbone) override {
    auto out = adapter::prefix_attach(backbone, options_.prefix, "mam");
    for (auto& t : adapter::parallel_attach(backbone, options_.parallel, "mam")) out.push_back(std::move(t));
    return out;
  }

  std::string describe() const override {
    return "mam(prefix_length=" + std::to_string(options_.prefix.length) +
           ",prefix_hidden=" + std::to_string(options_.prefix.hidden) +
           ",bottleneck=" + std::to_string(options_.parallel.bottleneck) +
           ",scale=" + std::to_string(options_.parallel.scale) + ")";
  }

 private:
  MamOptions options_;
};

}  // namespace

void register_mam(Registry& registry) {
  registry.add({"mam", "MAM adapter (He et al.): prefix tuning + scaled parallel FFN adapter",
                {
                 {"mam.prefix-length", int64_t{30},
                  "prefix length per attention"},
                 {"mam.prefix-hidden", int64_t{512},
                  "hidden size of the prefix reparameterization MLP"},
                 {"mam.bottleneck", int64_t{512},
                  "parallel FFN adapter bottleneck size"},
                 {"mam.scale", double{4.0},
                  "scale s of the parallel adapter's output"},
                },
                [](const OptionValues& values) {
                  MamOptions o;
                  o.prefix.length = values.get<int64_t>("mam.prefix-length");
                  o.prefix.hidden = values.get<int64_t>("mam.prefix-hidden");
                  o.parallel.bottleneck = values.get<int64_t>("mam.bottleneck");
                  o.parallel.scale = values.get<double>("mam.scale");
                  if (o.prefix.length <= 0 || o.prefix.hidden <= 0 || o.parallel.bottleneck <= 0) {
                    throw_usage_error("--mam.prefix-length, --mam.prefix-hidden and --mam.bottleneck must be positive");
                  }
                  return std::make_unique<Mam>(o);
                }});
}

}  // namespace dt::peft
