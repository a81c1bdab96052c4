// Bottleneck adapters (houlsby, pfeiffer, parallel_adapter) and (IA)³: table rows for the generic
// method checks, closed-form trainable counts on t5-base and stories260K, and each hook's function
// against the formula computed by hand from the method's own tensors.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/adapter/adapter.h"
#include "tests/peft/method_cases.h"
#include "tests/peft/test_adapters_util.h"
#include "util/error.h"

using namespace dt;
using dt::testing::adapters::batch_for;
using dt::testing::adapters::by_name;
using dt::testing::adapters::without_head;
using dt::testing::adapters::method_set;
using dt::testing::adapters::planned;
using dt::testing::adapters::randomize;
using dt::testing::adapters::tiny;

namespace {

const int kRows = [] {
  std::vector<dt::testing::MethodCase> rows;
  for (const std::string model : {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "tiny-bert"}) {
    rows.push_back({model, "houlsby", {"--houlsby.bottleneck", "4"}, true});
    rows.push_back({model, "houlsby", {"--houlsby.bottleneck", "3", "--houlsby.activation", "gelu"}, true});
    rows.push_back({model, "pfeiffer", {"--pfeiffer.bottleneck", "4"}, true});
    rows.push_back({model, "parallel_adapter", {"--parallel_adapter.bottleneck", "4"}, true});
    rows.push_back({model, "ia3", {}, true});
    rows.push_back({model, "houlsby+ia3+lora", {"--houlsby.bottleneck", "2", "--lora.r", "2"}, true});
  }
  return dt::testing::add_method_cases(rows);
}();

// x with the features of `site`'s input, h with those of its output: [2, 3, features].
std::pair<at::Tensor, at::Tensor> random_hx(const model::SiteInfo& site) {
  return {at::randn({2, 3, site.out_features}), at::randn({2, 3, site.in_features})};
}

at::Tensor bottleneck(const std::map<std::string, at::Tensor>& t, const std::string& module, const at::Tensor& x,
                      bool gelu = false) {
  const at::Tensor z = at::matmul(x, t.at(module + ".down.weight").t()) + t.at(module + ".down.bias");
  return at::matmul(gelu ? at::gelu(z) : at::relu(z), t.at(module + ".up.weight").t()) + t.at(module + ".up.bias");
}

}  // namespace

TEST(Adapters, PlanOnT5Base) {
  const auto c = model::named_config("t5-base");
  const int64_t d = c.d_model, ff = c.d_ff, L = c.num_layers, Ld = c.num_decoder_layers;
  ASSERT_EQ(d, 768);
  ASSERT_EQ(L, 12);
  ASSERT_EQ(Ld, 12);
  // One bottleneck adapter d -> m -> d with biases: 2·d·m + m + d.
  auto adapter = [d](int64_t m) { return 2 * d * m + m + d; };
  // houlsby (m = 64): after every self-attention and every FFN; T5's cross-attention gets none, so
  // 2 per encoder layer and 2 per decoder layer: (2·12 + 2·12) · 99,136.
  EXPECT_EQ(adapter(64), 99136);
  EXPECT_EQ(planned("t5-base", {"--method", "houlsby"}), (2 * L + 2 * Ld) * adapter(64));
  EXPECT_EQ(planned("t5-base", {"--method", "houlsby"}), 4758528);
  // pfeiffer (m = 64): after every FFN only: 24 · 99,136.
  EXPECT_EQ(planned("t5-base", {"--method", "pfeiffer"}), (L + Ld) * adapter(64));
  EXPECT_EQ(planned("t5-base", {"--method", "pfeiffer"}), 2379264);
  // parallel_adapter (m = 512) beside every FFN: 24 · (2·768·512 + 512 + 768).
  EXPECT_EQ(planned("t5-base", {"--method", "parallel_adapter"}), (L + Ld) * adapter(512));
  EXPECT_EQ(planned("t5-base", {"--method", "parallel_adapter"}), 18905088);
  // ia3: keys and values of every attention (encoder self; decoder self and cross) and the FFN
  // intermediate: 12 · (2·768 + 3072) + 12 · (4·768 + 3072).
  EXPECT_EQ(planned("t5-base", {"--method", "ia3"}), L * (2 * d + ff) + Ld * (4 * d + ff));
  EXPECT_EQ(planned("t5-base", {"--method", "ia3"}), 129024);
  // Composition adds up.
  EXPECT_EQ(planned("t5-base", {"--method", "houlsby+ia3"}), 4758528 + 129024);
}

TEST(Adapters, PlanOnStories260K) {
  const auto c = model::named_config("stories260K");
  const int64_t d = c.d_model, L = c.num_layers, kv = c.num_kv_heads * c.d_kv, ff = c.d_ff;
  auto adapter = [d](int64_t m) { return 2 * d * m + m + d; };
  EXPECT_EQ(planned("stories260K", {"--method", "houlsby"}), 2 * L * adapter(64));        // 83,200
  EXPECT_EQ(planned("stories260K", {"--method", "pfeiffer"}), L * adapter(64));           // 41,600
  EXPECT_EQ(planned("stories260K", {"--method", "parallel_adapter"}), L * adapter(512));  // 330,560
  // GQA: keys and values have num_kv_heads · d_kv = 32 features.
  EXPECT_EQ(planned("stories260K", {"--method", "ia3"}), L * (2 * kv + ff));  // 1,180
  EXPECT_EQ(planned("stories260K", {"--method", "ia3"}), 1180);
}

TEST(Adapters, HoulsbyPlacementSkipsCrossAttention) {
  const auto config = model::named_config("tiny-t5-v1_1");
  const auto sites = peft::adapter::houlsby_sites(config);
  int attention = 0, ffn = 0;
  for (const auto& s : sites) {
    EXPECT_EQ(s.name.find("EncDecAttention"), std::string::npos) << s.name;
    attention += s.kind == model::SiteKind::AttentionOutput;
    ffn += s.kind == model::SiteKind::FfnOutput;
  }
  EXPECT_EQ(attention, config.num_layers + config.num_decoder_layers);
  EXPECT_EQ(ffn, config.num_layers + config.num_decoder_layers);
}

TEST(Adapters, SequentialHookIsTheResidualBottleneckOfTheOutput) {
  for (const bool gelu : {false, true}) {
    auto backbone = tiny("tiny-llama");
    std::vector<std::string> args = {"--method", "houlsby", "--houlsby.bottleneck", "5"};
    if (gelu) args.insert(args.end(), {"--houlsby.activation", "gelu"});
    const auto trainables = without_head(method_set(args).apply(*backbone));
    randomize(trainables);
    const auto t = by_name(trainables);
    const auto sites = peft::adapter::houlsby_sites(backbone->config());
    ASSERT_EQ(trainables.size(), 4 * sites.size());
    c10::NoGradGuard no_grad;
    for (const auto& s : sites) {
      auto [h, x] = random_hx(s);
      const at::Tensor want = h + bottleneck(t, s.name + ".adapter", h, gelu);
      EXPECT_TRUE(at::allclose(backbone->hooks().output(s.name, h, x), want, 1e-5, 1e-6)) << s.name;
    }
  }
}

TEST(Adapters, PfeifferAdaptsEveryFfnOutputOnly) {
  auto backbone = tiny("tiny-bert");
  const auto trainables = without_head(method_set({"--method", "pfeiffer", "--pfeiffer.bottleneck", "3"}).apply(*backbone));
  randomize(trainables);
  const auto t = by_name(trainables);
  const auto sites = peft::adapter::ffn_sites(backbone->config());
  ASSERT_EQ(static_cast<int64_t>(sites.size()), backbone->config().num_layers);
  ASSERT_EQ(trainables.size(), 4 * sites.size());
  c10::NoGradGuard no_grad;
  for (const auto& s : sites) {
    auto [h, x] = random_hx(s);
    EXPECT_TRUE(at::allclose(backbone->hooks().output(s.name, h, x), h + bottleneck(t, s.name + ".adapter", h), 1e-5,
                             1e-6));
  }
  // Attention outputs are left alone.
  const std::string attn = "encoder.layer.0.attention.output.attn_out";
  const at::Tensor h = at::randn({2, 3, 16});
  EXPECT_TRUE(at::equal(backbone->hooks().output(attn, h, h), h));
}

TEST(Adapters, ParallelHookReadsTheFfnInputAndScales) {
  auto backbone = tiny("tiny-t5");
  const auto trainables = without_head(method_set({"--method", "parallel_adapter", "--parallel_adapter.bottleneck", "6",
                                      "--parallel_adapter.scale", "2.5"})
                              .apply(*backbone));
  randomize(trainables);
  const auto t = by_name(trainables);
  const auto sites = peft::adapter::ffn_sites(backbone->config());
  ASSERT_EQ(trainables.size(), 4 * sites.size());
  c10::NoGradGuard no_grad;
  for (const auto& s : sites) {
    auto [h, x] = random_hx(s);
    const at::Tensor want = h + 2.5 * bottleneck(t, s.name + ".parallel_adapter", x);
    EXPECT_TRUE(at::allclose(backbone->hooks().output(s.name, h, x), want, 1e-5, 1e-5)) << s.name;
  }
}

TEST(Adapters, InitializationFollowsThePapers) {
  at::manual_seed(1);
  // Houlsby: N(0, 1e-2²) truncated at 2σ, whose standard deviation is 0.8796σ; up and biases zero.
  const auto h = peft::adapter::make_bottleneck(768, 64, peft::adapter::Init::Houlsby);
  EXPECT_LE(h.down_weight.abs().max().item<double>(), 0.02);
  EXPECT_NEAR(h.down_weight.std().item<double>(), 0.008796, 0.0002);
  EXPECT_EQ(h.up_weight.abs().max().item<double>(), 0.0);
  EXPECT_EQ(h.up_bias.abs().max().item<double>(), 0.0);
  EXPECT_EQ(h.down_bias.abs().max().item<double>(), 0.0);
  // He et al.'s "lora" init: down U(±1/sqrt(d)), std 1/sqrt(3d); up zero.
  const auto p = peft::adapter::make_bottleneck(768, 512, peft::adapter::Init::Lora);
  EXPECT_LE(p.down_weight.abs().max().item<double>(), 1.0 / std::sqrt(768.0));
  EXPECT_NEAR(p.down_weight.std().item<double>(), 1.0 / std::sqrt(3.0 * 768.0), 2e-4);
  EXPECT_EQ(p.up_weight.abs().max().item<double>(), 0.0);
}

TEST(Adapters, Ia3RescalesKeysValuesAndIntermediate) {
  auto backbone = tiny("tiny-llama");
  const auto trainables = without_head(method_set({"--method", "ia3"}).apply(*backbone));
  const auto& c = backbone->config();
  // Per layer: k and v (kv heads · d_kv = 8 on tiny-llama's GQA) and the FFN intermediate.
  ASSERT_EQ(static_cast<int64_t>(trainables.size()), 3 * c.num_layers);
  EXPECT_EQ(trainables[0].name, "model.layers.0.self_attn.k.ia3_l");
  EXPECT_EQ(trainables[0].tensor.numel(), c.num_kv_heads * c.d_kv);
  EXPECT_EQ(trainables[2].name, "model.layers.0.mlp.wi.ia3_l");
  EXPECT_EQ(trainables[2].tensor.numel(), c.d_ff);
  randomize(trainables);
  c10::NoGradGuard no_grad;
  for (const auto& t : trainables) {
    const std::string site = t.name.substr(0, t.name.size() - std::string(".ia3_l").size());
    const at::Tensor h = at::randn({2, 3, t.tensor.numel()});
    EXPECT_TRUE(at::allclose(backbone->hooks().output(site, h, h), h * t.tensor)) << site;
  }
}

TEST(Adapters, BadOptionsAreUsageErrors) {
  EXPECT_THROW(method_set({"--method", "houlsby", "--houlsby.bottleneck", "0"}), UsageError);
  EXPECT_THROW(method_set({"--method", "houlsby", "--houlsby.activation", "softplus"}), UsageError);
  EXPECT_THROW(method_set({"--method", "pfeiffer", "--pfeiffer.bottleneck", "-3"}), UsageError);
  EXPECT_THROW(method_set({"--method", "parallel_adapter", "--parallel_adapter.bottleneck", "0"}), UsageError);
}

TEST(Adapters, RowsReachTheSharedTable) {
  int rows = 0;
  for (const auto& c : dt::testing::method_cases()) {
    for (const char* m : {"houlsby", "pfeiffer", "parallel_adapter", "prefix", "prompt", "ia3", "compacter", "mam"}) {
      rows += c.method == m;
    }
  }
  // Per tiny model: houlsby ×2, pfeiffer, parallel_adapter, ia3 (this file); prefix, prompt, mam
  // (test_prefix.cpp); compacter ×2 (test_compacter.cpp).
  (void)kRows;
  EXPECT_EQ(rows, 4 * 10);
}

TEST(Adapters, EachMethodAloneLearnsAFixedBatch) {
  // The method's own tensors, with the task head frozen at its random init, must move the model
  // toward one fixed answer: the end-to-end check that each method's hooks carry a training signal.
  // One label for all three examples (a frozen random tiny model attends almost uniformly, so a soft
  // prompt shifts every example nearly alike and cannot separate differently-labelled inputs). The
  // frozen head bounds how low the loss can go (normed hidden states, small head weights), so the
  // target is that floor — the lowest loss any method reaches on the model: the adapters must get
  // within 10% of the way to it; (IA)³ and prompt tuning, which can only rescale or prepend, must at
  // least lower the loss.
  const std::vector<std::vector<std::string>> methods = {
      {"--method", "houlsby", "--houlsby.bottleneck", "4"},
      {"--method", "pfeiffer", "--pfeiffer.bottleneck", "4"},
      {"--method", "parallel_adapter", "--parallel_adapter.bottleneck", "4"},
      {"--method", "prefix", "--prefix.length", "3", "--prefix.hidden", "8"},
      {"--method", "prompt", "--prompt.length", "4"},
      {"--method", "ia3"},
      {"--method", "compacter", "--compacter.bottleneck", "8"},
      {"--method", "mam", "--mam.prefix-length", "3", "--mam.prefix-hidden", "8", "--mam.bottleneck", "4"}};
  for (const std::string model : {"tiny-llama", "tiny-t5", "tiny-bert"}) {
    std::vector<std::pair<double, double>> losses;  // first, last
    for (const auto& args : methods) {
      auto backbone = tiny(model);
      const auto trainables = without_head(method_set(args).apply(*backbone));
      std::vector<at::Tensor> params;
      for (const auto& t : trainables) params.push_back(t.tensor);
      auto batch = batch_for(backbone->config());
      batch.labels = at::ones({3}, at::kLong);
      torch::optim::Adam adam(params, torch::optim::AdamOptions(5e-2));
      double first = 0.0, last = 0.0;
      for (int step = 0; step < 100; ++step) {
        adam.zero_grad();
        const at::Tensor loss = backbone->forward(batch).loss;
        loss.backward();
        adam.step();
        (step == 0 ? first : last) = loss.item<double>();
      }
      losses.emplace_back(first, last);
    }
    double floor = losses[0].second;
    for (const auto& [first, last] : losses) floor = std::min(floor, last);
    for (size_t i = 0; i < methods.size(); ++i) {
      const auto [first, last] = losses[i];
      const std::string& method = methods[i][1];
      const std::string what = model + " " + method + ": loss " + std::to_string(first) + " -> " +
                               std::to_string(last) + ", floor " + std::to_string(floor);
      EXPECT_LT(last, first - 1e-3) << what;
      if (method != "ia3" && method != "prompt") {
        EXPECT_LT(last - floor, 0.1 * (first - floor)) << what;
      }
    }
  }
}
