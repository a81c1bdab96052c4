// Merge / unmerge (HF PEFT's merge_adapter / unmerge_adapter) over tiny models of every architecture:
// after merge() the backbone's own weights, with no hook at all, compute the hooked model's logits;
// unmerge() gives the original weights back within fp rounding and the hooks work again; methods that
// cannot be folded into existing weights refuse with a UsageError naming them, before touching any.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "model/backbone.h"
#include "peft/method.h"
#include "sparse/methods.h"
#include "tests/peft/test_adapters_util.h"
#include "util/error.h"

using namespace dt;
using dt::testing::adapters::batch_for;
using dt::testing::adapters::method_set;
using dt::testing::adapters::randomize;
using dt::testing::adapters::tiny;

namespace {

const std::vector<std::string> kTinyModels = {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "tiny-bert"};

struct MergeCase {
  std::string method;
  std::vector<std::string> args;
};

// Every mergeable method, alone and composed (lora before ia3 on a weight both touch).
std::vector<MergeCase> mergeable() {
  return {{"lora", {"--lora.targets", "q,k,v,o,wi,wo", "--lora.r", "2", "--lora.alpha", "6"}},
          {"lora", {}},
          {"ia3", {}},
          {"full", {}},
          {"fish", {"--fish.select", "magnitude", "--fish.keep", "0.05"}},
          {"lora+ia3", {"--lora.targets", "k,v,wo", "--lora.r", "2"}},
          {"fish+lora", {"--fish.select", "random", "--fish.keep", "0.02"}},
          {"dsee", {"--dsee.rank", "2", "--dsee.sparse", "16", "--dsee.targets", "q,k,v,o,wi,wo"}},
          {"dsee", {"--dsee.sparse", "0"}},
          {"dsee+ia3", {"--dsee.select", "magnitude", "--dsee.targets", "k,wo"}}};
}

peft::MethodSet make(const std::string& method, const std::vector<std::string>& args) {
  sparse::register_methods();  // fish, dsee
  std::vector<std::string> argv = {"--method", method};
  argv.insert(argv.end(), args.begin(), args.end());
  return method_set(argv);
}

std::map<std::string, at::Tensor> snapshot(const model::Backbone& backbone) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : backbone.named_parameters()) out[name] = t.detach().clone();
  return out;
}

at::Tensor logits(const peft::MethodSet& set, model::Backbone& backbone, const model::Batch& batch) {
  c10::NoGradGuard no_grad;
  return set.forward(backbone, batch).logits.detach().clone();
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// 1e-4 relative to the logits' scale: float32 sums in another order (W x + B A x against (W + B A) x)
// through every layer; torch 2.11's CPU kernels put tiny-t5-v1_1's lora+ia3 at 2.5e-5, above 1e-5.
double tolerance(const at::Tensor& reference) {
  return 1e-4 * std::max(1.0, reference.abs().max().item<double>());
}

// Trained-looking values: random, and for (IA)^3 vectors around 1 (never 0, so unmerge can divide).
void train_like(const std::vector<peft::Trainable>& trainables) {
  randomize(trainables);
  c10::NoGradGuard no_grad;
  for (const auto& t : trainables) {
    if (t.name.size() > 6 && t.name.compare(t.name.size() - 6, 6, ".ia3_l") == 0) t.tensor.mul_(0.5).add_(1.0);
  }
}

}  // namespace

TEST(PeftMerge, MergedWeightsAloneComputeTheHookedModelAndUnmergeRestores) {
  for (const auto& model_name : kTinyModels) {
    for (const auto& c : mergeable()) {
      const std::string label = model_name + " / " + c.method;
      auto backbone = tiny(model_name);
      backbone->set_training(false);  // no dropout: the three forwards must see the same function
      const auto set = make(c.method, c.args);
      const auto trainables = set.apply(*backbone);
      train_like(trainables);
      const model::Batch batch = batch_for(backbone->config());
      const auto original = snapshot(*backbone);
      const at::Tensor hooked = logits(set, *backbone, batch);
      ASSERT_TRUE(set.can_merge()) << label;

      set.merge(*backbone);
      const at::Tensor merged = logits(set, *backbone, batch);  // hooks pass through now
      EXPECT_LT(max_abs_diff(merged, hooked), tolerance(hooked)) << label;
      int changed = 0;
      for (const auto& [name, t] : backbone->named_parameters()) changed += !at::equal(t, original.at(name));
      if (c.method != "full") {
        EXPECT_GT(changed, 0) << label << ": merge changed no weight";
      }

      // The export's view: a fresh backbone without any method, given the merged weights.
      const auto merged_weights = snapshot(*backbone);
      auto plain = tiny(model_name, /*seed=*/99);
      plain->set_training(false);
      {
        c10::NoGradGuard no_grad;
        for (auto& [name, t] : plain->named_parameters()) t.copy_(merged_weights.at(name));
      }
      const at::Tensor alone = logits(peft::MethodSet{}, *plain, batch);
      EXPECT_LT(max_abs_diff(alone, hooked), tolerance(hooked)) << label << ": merged weights without hooks";

      // Restored within fp rounding: a few float32 ulps of the largest value the weight held meanwhile.
      set.unmerge(*backbone);
      for (const auto& [name, t] : backbone->named_parameters()) {
        const double scale = std::max({1.0, original.at(name).abs().max().item<double>(),
                                       merged_weights.at(name).abs().max().item<double>()});
        EXPECT_LE(max_abs_diff(t, original.at(name)), 4 * 1.2e-7 * scale) << label << ": unmerge restores " << name;
      }
      EXPECT_LT(max_abs_diff(logits(set, *backbone, batch), hooked), tolerance(hooked)) << label << ": hooks work again";
    }
  }
}

TEST(PeftMerge, MergeTwiceOrUnmergeFirstIsAnError) {
  auto backbone = tiny("tiny-llama");
  const auto set = make("lora", {});
  set.apply(*backbone);
  EXPECT_THROW(set.unmerge(*backbone), dt::Error);
  set.merge(*backbone);
  EXPECT_THROW(set.merge(*backbone), dt::Error);
}

TEST(PeftMerge, UnmergeableMethodsRefuseBeforeTouchingAnyWeight) {
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"bitfit", "bitfit"},     {"houlsby", "houlsby"},   {"pfeiffer", "pfeiffer"},
      {"parallel_adapter", "parallel_adapter"}, {"prefix", "prefix"}, {"prompt", "prompt"},
      {"compacter", "compacter"}, {"mam", "mam"},        {"lora+bitfit", "bitfit"}};
  for (const auto& model_name : kTinyModels) {
    for (const auto& [method, culprit] : refused) {
      const std::string label = model_name + " / " + method;
      auto backbone = tiny(model_name);
      const auto set = make(method, {});
      train_like(set.apply(*backbone));
      const auto original = snapshot(*backbone);
      EXPECT_FALSE(set.can_merge()) << label;
      try {
        set.merge(*backbone);
        ADD_FAILURE() << label << ": merge did not throw";
      } catch (const dt::UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("'" + culprit + "' cannot be merged"), std::string::npos)
            << label << ": " << e.what();
        // The error lists what can be merged, as the methods themselves answer (not a list kept by hand).
        EXPECT_NE(std::string(e.what()).find("(mergeable: full, lora, ia3, fish, dsee)"), std::string::npos)
            << label << ": " << e.what();
      }
      for (const auto& [name, t] : backbone->named_parameters()) {
        EXPECT_TRUE(at::equal(t, original.at(name))) << label << ": " << name << " changed";
      }
    }
  }
}

// (IA)^3 scales the weight that LoRA-on-wo adds to: the hooked model computes (W + s·B·A)·diag(l),
// so LoRA must be merged first. In the other order merge() refuses instead of computing a wrong W.
TEST(PeftMerge, Ia3BeforeAWeightDeltaOnItsWeightIsRefused) {
  for (const auto& model_name : kTinyModels) {
    auto backbone = tiny(model_name);
    const auto set = make("ia3+lora", {"--lora.targets", "wo", "--lora.r", "2"});
    train_like(set.apply(*backbone));
    try {
      set.merge(*backbone);
      ADD_FAILURE() << model_name << ": ia3+lora(wo) merged";
    } catch (const dt::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("before ia3"), std::string::npos) << e.what();
    }
  }
}
