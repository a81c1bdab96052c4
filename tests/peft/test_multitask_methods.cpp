// Multi-task methods shared_adapter and hyperformer (issue 16 §2, §4): rows for the generic method checks,
// closed-form plan counts, the exact reductions (shared adapters with one task == houlsby; a hypernetwork
// whose generators are frozen to fixed weights == plain adapters with those weights), and task
// conditioning (a batch's task picks its own tensors; another task's get no gradient).
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "peft/adapter/adapter.h"
#include "tests/peft/method_cases.h"
#include "tests/peft/test_adapters_util.h"
#include "util/error.h"

using namespace dt;
using dt::testing::adapters::batch_for;
using dt::testing::adapters::by_name;
using dt::testing::adapters::method_set;
using dt::testing::adapters::method_set_for_tasks;
using dt::testing::adapters::planned;
using dt::testing::adapters::randomize;
using dt::testing::adapters::tiny;
using dt::testing::adapters::without_head;

namespace {

const int kRows = [] {
  std::vector<dt::testing::MethodCase> rows;
  for (const std::string model : {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "tiny-bert"}) {
    rows.push_back({model, "shared_adapter", {"--shared_adapter.bottleneck", "4"}, true});
    rows.push_back({model, "shared_adapter", {"--shared_adapter.share", "down"}, true});
    rows.push_back({model, "hyperformer", {}, false});
    rows.push_back({model, "hyperformer", {"--hyperformer.reduction-factor", "4", "--hyperformer.layer-norm", "none"},
                    false});
  }
  return dt::testing::add_method_cases(rows);
}();

const std::vector<std::string> kModels = {"tiny-llama", "tiny-t5", "tiny-bert"};

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

at::Tensor logits_of(model::Backbone& backbone, model::Batch batch, int64_t task = 0) {
  c10::NoGradGuard no_grad;
  backbone.set_training(false);
  batch.task = task;
  return backbone.forward(batch).logits;
}

}  // namespace

// ---- shared_adapter ---------------------------------------------------------------------------------

TEST(SharedAdapter, WithOneTaskItIsHoulsby) {
  for (const auto& model : kModels) {
    for (const std::string share : {"all", "down"}) {
      auto reference = tiny(model), shared = tiny(model);
      at::manual_seed(21);
      const auto houlsby = without_head(method_set({"--method", "houlsby", "--houlsby.bottleneck", "3"}).apply(*reference));
      at::manual_seed(21);
      const auto ours = without_head(method_set_for_tasks({"--method", "shared_adapter", "--shared_adapter.bottleneck",
                                                           "3", "--shared_adapter.share", share},
                                                          {"sst2"})
                                         .apply(*shared));
      ASSERT_EQ(houlsby.size(), ours.size()) << model << " " << share;
      for (size_t i = 0; i < ours.size(); ++i) {
        std::string name = ours[i].name;  // share=down names the one task's up projection
        const auto at = name.find(".up.sst2.");
        if (at != std::string::npos) name.replace(at, 9, ".up.");
        EXPECT_EQ(name, houlsby[i].name) << model << " " << share;
        EXPECT_TRUE(at::equal(ours[i].tensor, houlsby[i].tensor)) << model << " " << share << " " << name;
      }
      // Same values after a random fill (zero up projections would hide the adapters): the same function.
      randomize(houlsby, 5);
      randomize(ours, 5);
      const auto batch = batch_for(reference->config());
      const double diff = max_abs_diff(logits_of(*reference, batch), logits_of(*shared, batch));
      EXPECT_EQ(diff, 0.0) << model << " share=" << share;
    }
  }
}

TEST(SharedAdapter, HalfSharedTrainsEachTasksOwnUpProjection) {
  const std::vector<std::string> tasks = {"sst2", "cola", "rte"};
  auto backbone = tiny("tiny-bert");
  const auto set = method_set_for_tasks({"--method", "shared_adapter", "--shared_adapter.share", "down",
                                         "--shared_adapter.bottleneck", "4"},
                                        tasks);
  const auto trainables = without_head(set.apply(*backbone));
  // Closed form: per site, a shared down [m, d] + [m] and one up [d, m] + [d] per task.
  const auto sites = peft::adapter::houlsby_sites(backbone->config());
  const int64_t d = backbone->config().d_model, m = 4, T = 3;
  EXPECT_EQ(model::total_params(set.plan(backbone->config(), 0)) - model::total_params(peft::head_plan(backbone->config(), 0)),
            static_cast<int64_t>(sites.size()) * (m * d + m + T * (d * m + d)));
  randomize(trainables, 9);
  auto batch = batch_for(backbone->config());
  EXPECT_GT(max_abs_diff(logits_of(*backbone, batch, 0), logits_of(*backbone, batch, 2)), 1e-4)
      << "tasks 0 and 2 use different up projections";
  backbone->set_training(true);
  batch.task = 1;
  backbone->forward(batch).loss.backward();
  for (const auto& t : trainables) {
    const bool other_task = t.name.find(".up.sst2.") != std::string::npos || t.name.find(".up.rte.") != std::string::npos;
    const bool has_grad = t.tensor.grad().defined() && t.tensor.grad().abs().sum().item<double>() > 0;
    EXPECT_EQ(has_grad, !other_task) << t.name;
  }
  EXPECT_THROW(method_set({"--method", "shared_adapter", "--shared_adapter.share", "half"}), UsageError);
}

// ---- hyperformer ------------------------------------------------------------------------------------

TEST(Hyperformer, PlanCountsOneHypernetworkInClosedForm) {
  // t5-base: d = 768, m = 768 / 16 = 48, 24 blocks (12 encoder + 12 decoder), the reference defaults
  // e = 64 (task, layer, block-type embeddings), projector 3e -> 128 -> p = 64 with its LayerNorm.
  const int64_t d = 768, m = 48, e = 64, h = 128, p = 64, L = 24;
  auto count = [&](int64_t tasks, bool post) {
    const int64_t embeddings = tasks * e + L * e + 2 * e;
    const int64_t projector = (h * 3 * e + h) + (p * h + p) + 2 * p;
    int64_t generators = (m * d * p + m * d) + (m * p + m) + (d * m * p + d * m) + (d * p + d);
    if (post) generators += 2 * (d * p + d);
    return embeddings + projector + generators;
  };
  const auto head = model::total_params(peft::head_plan(model::named_config("t5-base"), 0));
  for (int64_t tasks : {1, 3}) {
    std::vector<std::string> names;
    for (int64_t t = 0; t < tasks; ++t) names.push_back("task" + std::to_string(t));
    const auto with_post = method_set_for_tasks({"--method", "hyperformer"}, names);
    EXPECT_EQ(model::total_params(with_post.plan(model::named_config("t5-base"), 0)) - head, count(tasks, true));
    const auto without = method_set_for_tasks({"--method", "hyperformer", "--hyperformer.layer-norm", "none"}, names);
    EXPECT_EQ(model::total_params(without.plan(model::named_config("t5-base"), 0)) - head, count(tasks, false));
  }
  // Without --task the methods are told one task ("default").
  EXPECT_EQ(planned("t5-base", {"--method", "hyperformer"}), count(1, true) + head);
  EXPECT_THROW(method_set({"--method", "hyperformer", "--hyperformer.layer-norm", "pre"}), UsageError);
  EXPECT_THROW(method_set({"--method", "hyperformer", "--hyperformer.reduction-factor", "0"}), UsageError);
  EXPECT_THROW(method_set({"--method", "hyperformer", "--hyperformer.reduction-factor", "64"})
                   .plan(model::named_config("tiny-bert"), 0),
               UsageError);  // 16 / 64 leaves no bottleneck
}

// A hypernetwork whose generators are frozen to produce fixed weights (weight matrices zero, biases the
// adapter's flattened weights) is plain Houlsby adapters with those weights at every site.
TEST(Hyperformer, FrozenGeneratorsArePlainAdapters) {
  for (const auto& model : kModels) {
    auto reference = tiny(model), hyper = tiny(model);
    const int64_t d = reference->config().d_model, m = 4;
    at::manual_seed(31);
    const at::Tensor down_w = at::randn({m, d}) * 0.3, down_b = at::randn({m}) * 0.3;
    const at::Tensor up_w = at::randn({d, m}) * 0.3, up_b = at::randn({d}) * 0.3;

    const auto houlsby = by_name(without_head(
        method_set({"--method", "houlsby", "--houlsby.bottleneck", "4", "--houlsby.activation", "relu"})
            .apply(*reference)));
    const auto gen = by_name(without_head(
        method_set_for_tasks({"--method", "hyperformer", "--hyperformer.reduction-factor", std::to_string(d / m),
                              "--hyperformer.layer-norm", "none", "--hyperformer.activation", "relu"},
                             {"sst2", "cola"})
            .apply(*hyper)));
    {
      c10::NoGradGuard no_grad;
      for (const auto& [name, t] : houlsby) {
        const std::string leaf = name.substr(name.rfind(".adapter.") + 9);
        t.copy_(leaf == "down.weight" ? down_w : leaf == "down.bias" ? down_b : leaf == "up.weight" ? up_w : up_b);
      }
      const std::string x = "hyperformer.";
      for (const std::string g : {"down_sampler_hyper_net", "up_sampler_hyper_net"}) {
        gen.at(x + g + ".weight_generator.weight").zero_();
        gen.at(x + g + ".bias_generator.weight").zero_();
      }
      gen.at(x + "down_sampler_hyper_net.weight_generator.bias").copy_(down_w.reshape(-1));
      gen.at(x + "down_sampler_hyper_net.bias_generator.bias").copy_(down_b);
      gen.at(x + "up_sampler_hyper_net.weight_generator.bias").copy_(up_w.reshape(-1));
      gen.at(x + "up_sampler_hyper_net.bias_generator.bias").copy_(up_b);
    }
    const auto batch = batch_for(reference->config());
    const at::Tensor want = logits_of(*reference, batch);
    EXPECT_GT(max_abs_diff(want, logits_of(*tiny(model), batch)), 1e-4) << model << ": the adapters do something";
    for (int64_t task : {0, 1}) {  // every task gets the same fixed weights
      EXPECT_LE(max_abs_diff(want, logits_of(*hyper, batch, task)), 1e-6) << model << " task " << task;
    }
  }
}

TEST(Hyperformer, EachTaskGetsItsOwnAdaptersFromOneHypernetwork) {
  auto backbone = tiny("tiny-llama");
  const auto trainables =
      without_head(method_set_for_tasks({"--method", "hyperformer", "--hyperformer.reduction-factor", "4"},
                                        {"sst2", "cola", "stsb"})
                       .apply(*backbone));
  auto batch = batch_for(backbone->config());
  const at::Tensor task0 = logits_of(*backbone, batch, 0), task1 = logits_of(*backbone, batch, 1);
  EXPECT_GT(max_abs_diff(task0, task1), 1e-5) << "task embeddings condition the generated adapters";
  EXPECT_THROW(logits_of(*backbone, batch, 3), Error);  // no fourth task
  // A task-1 batch trains the hypernetwork and task 1's embedding row only.
  backbone->set_training(true);
  batch.task = 1;
  backbone->forward(batch).loss.backward();
  for (const auto& t : trainables) {
    ASSERT_TRUE(t.tensor.grad().defined()) << t.name;
    if (t.name == "hyperformer.task_embedding.weight") {
      EXPECT_EQ(t.tensor.grad()[0].abs().sum().item<double>(), 0.0);
      EXPECT_GT(t.tensor.grad()[1].abs().sum().item<double>(), 0.0);
      EXPECT_EQ(t.tensor.grad()[2].abs().sum().item<double>(), 0.0);
    } else {
      EXPECT_GT(t.tensor.grad().abs().sum().item<double>(), 0.0) << t.name;
    }
  }
}
