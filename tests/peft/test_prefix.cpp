// Prefix tuning, prompt tuning and MAM: table rows for the generic method checks, closed-form
// trainable counts on t5-base and stories260K, the prefix MLP's layout against a hand computation,
// folding of the MLP after training, and the prompt's sampled-vocabulary initialization.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>

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
using dt::testing::adapters::tiny;

namespace {

const std::vector<std::string> kModels = {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "tiny-bert"};
const std::vector<std::string> kPrefix = {"--prefix.length", "3", "--prefix.hidden", "8"};
const std::vector<std::string> kPrompt = {"--prompt.length", "4"};
const std::vector<std::string> kMam = {"--mam.prefix-length", "3", "--mam.prefix-hidden", "8", "--mam.bottleneck", "4"};

const int kRows = [] {
  std::vector<dt::testing::MethodCase> rows;
  for (const auto& model : kModels) {
    rows.push_back({model, "prefix", kPrefix, false});
    rows.push_back({model, "prompt", kPrompt, false});
    rows.push_back({model, "mam", kMam, false});
  }
  return dt::testing::add_method_cases(rows);
}();

std::vector<std::string> with(const std::string& method, std::vector<std::string> args) {
  args.insert(args.begin(), {"--method", method});
  return args;
}

}  // namespace

TEST(PrefixTuning, PlanOnT5Base) {
  const auto c = model::named_config("t5-base");
  const int64_t d = c.d_model, L = c.num_layers, Ld = c.num_decoder_layers, kv = c.num_heads * c.d_kv;
  // One prefix group of `layers` attentions, P = 30, h = 512: embedding P·d, Linear(d, h) h·d + h,
  // Linear(h, 2·layers·kv) 2·layers·kv·h + 2·layers·kv.
  auto group = [&](int64_t layers, int64_t P, int64_t h) {
    return P * d + (h * d + h) + (2 * layers * kv * h + 2 * layers * kv);
  };
  // T5: three groups (encoder self, decoder self, decoder cross), 12 attentions each.
  const int64_t prefix = group(L, 30, 512) + group(Ld, 30, 512) + group(Ld, 30, 512);
  EXPECT_EQ(group(12, 30, 512), 9872384);
  EXPECT_EQ(planned("t5-base", {"--method", "prefix"}), prefix);
  EXPECT_EQ(planned("t5-base", {"--method", "prefix"}), 29617152);
  // Folded after training: P · 2 · kv per attention, 36 attentions.
  EXPECT_EQ(30 * 2 * kv * (L + 2 * Ld), 1658880);
  // prompt: 20 soft tokens of d_model.
  EXPECT_EQ(planned("t5-base", {"--method", "prompt"}), 20 * d);
  EXPECT_EQ(planned("t5-base", {"--method", "prompt"}), 15360);
  // mam: the prefix (P = 30, h = 512) + the parallel adapter (m = 512) at 24 FFNs.
  const int64_t parallel = (L + Ld) * (2 * d * 512 + 512 + d);
  EXPECT_EQ(planned("t5-base", {"--method", "mam"}), prefix + parallel);
  EXPECT_EQ(planned("t5-base", {"--method", "mam"}), 48522240);
  EXPECT_EQ(planned("t5-base", {"--method", "mam", "--mam.prefix-length", "10", "--mam.bottleneck", "64"}),
            group(L, 10, 512) + 2 * group(Ld, 10, 512) + (L + Ld) * (2 * d * 64 + 64 + d));
}

TEST(PrefixTuning, PlanOnStories260K) {
  const auto c = model::named_config("stories260K");
  const int64_t d = c.d_model, L = c.num_layers, kv = c.num_kv_heads * c.d_kv;
  ASSERT_EQ(kv, 32);  // GQA: 4 kv heads of 8; the prefix is given per kv head
  const int64_t prefix = 30 * d + (512 * d + 512) + (2 * L * kv * 512 + 2 * L * kv);
  EXPECT_EQ(planned("stories260K", {"--method", "prefix"}), prefix);  // one group (decoder)
  EXPECT_EQ(planned("stories260K", {"--method", "prefix"}), 199360);
  EXPECT_EQ(planned("stories260K", {"--method", "prompt"}), 20 * d);
  EXPECT_EQ(planned("stories260K", {"--method", "mam"}), prefix + L * (2 * d * 512 + 512 + d));
}

TEST(PrefixTuning, GroupsFollowThePrefixCode) {
  // tiny-t5-v1_1: 2 encoder layers, 3 decoder layers.
  const auto t5 = peft::adapter::prefix_groups(model::named_config("tiny-t5-v1_1"));
  ASSERT_EQ(t5.size(), 3u);
  EXPECT_EQ(t5[0].name, "encoder");
  EXPECT_EQ(t5[0].attentions.size(), 2u);
  EXPECT_EQ(t5[0].attentions[1], "encoder.block.1.layer.0.SelfAttention");
  EXPECT_EQ(t5[1].name, "decoder");
  EXPECT_EQ(t5[1].attentions.size(), 3u);
  EXPECT_EQ(t5[2].attentions.size(), 3u);
  EXPECT_EQ(t5[2].name, "cross");
  EXPECT_EQ(t5[2].attentions[2], "decoder.block.2.layer.1.EncDecAttention");
  const auto llama = peft::adapter::prefix_groups(model::named_config("tiny-llama"));
  ASSERT_EQ(llama.size(), 1u);
  EXPECT_EQ(llama[0].kv_heads, 2);  // tiny-llama: 4 query heads, 2 kv heads
  EXPECT_EQ(llama[0].attentions[0], "model.layers.0.self_attn");
  const auto bert = peft::adapter::prefix_groups(model::named_config("tiny-bert"));
  ASSERT_EQ(bert.size(), 1u);
  EXPECT_EQ(bert[0].attentions[1], "encoder.layer.1.attention.self");
}

TEST(PrefixTuning, KeysAndValuesAreSlicesOfTheMlpOutput) {
  auto backbone = tiny("tiny-llama");
  const auto trainables = without_head(method_set(with("prefix", kPrefix)).apply(*backbone));
  const auto t = by_name(trainables);
  const auto& c = backbone->config();
  const int64_t P = 3, KV = c.num_kv_heads, D = c.d_kv, L = c.num_layers;
  c10::NoGradGuard no_grad;
  // The prefix code: MLP(E) viewed as [P, layers, 2 (key, value), heads, head_dim].
  const at::Tensor hidden = at::tanh(at::matmul(t.at("prefix.decoder.embedding"), t.at("prefix.decoder.mlp.0.weight").t()) +
                                     t.at("prefix.decoder.mlp.0.bias"));
  const at::Tensor all = (at::matmul(hidden, t.at("prefix.decoder.mlp.2.weight").t()) + t.at("prefix.decoder.mlp.2.bias"))
                             .view({P, L, 2, KV, D});
  for (int64_t j = 0; j < L; ++j) {
    auto [k, v] = backbone->hooks().prefix("model.layers." + std::to_string(j) + ".self_attn", 5);
    ASSERT_EQ(k.sizes().vec(), (std::vector<int64_t>{5, KV, P, D}));
    ASSERT_EQ(v.sizes().vec(), (std::vector<int64_t>{5, KV, P, D}));
    const at::Tensor want_k = all.select(1, j).select(1, 0).permute({1, 0, 2});  // [KV, P, D]
    const at::Tensor want_v = all.select(1, j).select(1, 1).permute({1, 0, 2});
    for (int64_t b = 0; b < 5; ++b) {
      EXPECT_TRUE(at::allclose(k[b], want_k, 1e-5, 1e-6)) << j;
      EXPECT_TRUE(at::allclose(v[b], want_v, 1e-5, 1e-6)) << j;
    }
  }
}

TEST(PrefixTuning, TheMlpFoldsIntoFixedPrefixes) {
  // After training, the prefixes are a fixed function of the trainables: evaluating the MLP once and
  // attaching the results as constants gives the same model.
  for (const auto& name : kModels) {
    auto backbone = tiny(name);
    method_set(with("prefix", kPrefix)).apply(*backbone);
    const auto batch = batch_for(backbone->config());
    c10::NoGradGuard no_grad;
    backbone->set_training(false);
    const at::Tensor want = backbone->forward(batch).logits;
    std::map<std::string, std::pair<at::Tensor, at::Tensor>> folded;
    for (const auto& g : peft::adapter::prefix_groups(backbone->config())) {
      for (const auto& a : g.attentions) {
        auto [k, v] = backbone->hooks().prefix(a, 1);
        folded[a] = {k.clone(), v.clone()};
      }
    }
    backbone->hooks().clear();
    for (const auto& [a, kv] : folded) {
      backbone->hooks().set_prefix(a, [kv = kv](int64_t batch) {
        return std::make_pair(kv.first.expand({batch, -1, -1, -1}), kv.second.expand({batch, -1, -1, -1}));
      });
    }
    EXPECT_TRUE(at::allclose(backbone->forward(batch).logits, want, 1e-5, 1e-6)) << name;
  }
}

TEST(PrefixTuning, PrefixPromptAndMamChangeTheOutput) {
  for (const auto& name : kModels) {
    for (const auto& args : {with("prefix", kPrefix), with("prompt", kPrompt), with("mam", kMam)}) {
      auto bare = tiny(name);
      auto tuned = tiny(name);
      method_set(args).apply(*tuned);
      const auto batch = batch_for(bare->config());
      c10::NoGradGuard no_grad;
      const at::Tensor want = bare->forward(batch).logits;
      const double diff = (want - tuned->forward(batch).logits).abs().max().item<double>();
      // Relative to the logits' scale (tiny-bert's classifier is N(0, 0.02²): its logits are ~1e-3).
      EXPECT_GT(diff, 1e-2 * want.abs().max().item<double>()) << name << " " << args[1];
    }
  }
}

TEST(PromptTuning, InitializedFromSampledVocabularyDeterministically) {
  for (const auto& name : kModels) {
    auto a = tiny(name);
    auto b = tiny(name);
    auto c = tiny(name);
    at::manual_seed(5);
    const auto ta = without_head(method_set({"--method", "prompt", "--prompt.length", "8"}).apply(*a));
    at::manual_seed(5);
    const auto tb = without_head(method_set({"--method", "prompt", "--prompt.length", "8"}).apply(*b));
    at::manual_seed(6);
    const auto tc = without_head(method_set({"--method", "prompt", "--prompt.length", "8"}).apply(*c));
    ASSERT_EQ(ta[0].name, "prompt.embedding");
    EXPECT_TRUE(at::equal(ta[0].tensor, tb[0].tensor)) << name;
    EXPECT_FALSE(at::equal(ta[0].tensor, tc[0].tensor)) << name;
    // Every soft token is a copy of some vocabulary row.
    at::Tensor vocabulary;
    for (const auto& s : model::describe_sites(a->config())) {
      if (s.kind != model::SiteKind::Embedding) continue;
      for (const auto& [n, t] : a->named_parameters()) {
        if (n == s.weight) vocabulary = t;
      }
    }
    ASSERT_TRUE(vocabulary.defined()) << name;
    for (int64_t i = 0; i < 8; ++i) {
      const at::Tensor match = (vocabulary - ta[0].tensor[i].detach()).abs().amax(1).eq(0);
      EXPECT_TRUE(match.any().item<bool>()) << name << " soft token " << i;
    }
  }
}

TEST(PromptTuning, LlamaLanguageModelingCoversThePrependedPositions) {
  at::manual_seed(7);
  auto backbone = model::make_backbone(model::named_config("tiny-llama"), /*num_labels=*/0);
  method_set({"--method", "prompt", "--prompt.length", "4"}).apply(*backbone);
  model::Batch batch;
  batch.input_ids = at::randint(3, 64, {2, 6}, at::kLong);
  batch.labels = batch.input_ids.clone();
  const auto out = backbone->forward(batch);
  EXPECT_EQ(out.logits.sizes().vec(), (std::vector<int64_t>{2, 10, 64}));
  EXPECT_TRUE(std::isfinite(out.loss.item<double>()));
  out.loss.backward();  // the soft tokens get a gradient through the real tokens' predictions
}

TEST(Mam, IsPrefixPlusParallelAdapter) {
  const auto config = model::named_config("tiny-t5");
  const auto mam = method_set({"--method", "mam", "--mam.prefix-length", "3", "--mam.prefix-hidden", "8",
                               "--mam.bottleneck", "4"})
                       .plan(config, 0);
  auto both = method_set({"--method", "prefix+parallel_adapter", "--prefix.length", "3", "--prefix.hidden", "8",
                          "--parallel_adapter.bottleneck", "4"})
                  .plan(config, 0);
  ASSERT_EQ(mam.size(), both.size());
  for (size_t i = 0; i < mam.size(); ++i) {
    EXPECT_EQ(mam[i].name, both[i].name);
    EXPECT_EQ(mam[i].shape, both[i].shape);
  }
  // Two prefix methods on one attention are refused.
  auto backbone = tiny("tiny-t5");
  EXPECT_THROW(method_set({"--method", "mam+prefix"}).apply(*backbone), Error);
}

TEST(PrefixTuning, BadOptionsAreUsageErrors) {
  EXPECT_THROW(method_set({"--method", "prefix", "--prefix.length", "0"}), UsageError);
  EXPECT_THROW(method_set({"--method", "prefix", "--prefix.hidden", "0"}), UsageError);
  EXPECT_THROW(method_set({"--method", "prompt", "--prompt.length", "0"}), UsageError);
  EXPECT_THROW(method_set({"--method", "mam", "--mam.bottleneck", "0"}), UsageError);
}
