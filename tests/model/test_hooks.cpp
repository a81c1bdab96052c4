// tests/model/test_hooks.cpp — HookSet semantics, and that the Llama backbone consults each kind of
// hook where hooks.h says (checked against equivalent weight edits, not just "output changed").
#include "model/hooks.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

#include "model/llama.h"
#include "model/load.h"
#include "test_llama_util.h"

namespace dt::model {
namespace {

TEST(HookSet, IdentityWhenEmptyAndOrderedWhenNot) {
  HookSet hooks;
  EXPECT_TRUE(hooks.empty());
  at::Tensor h = at::randn({2, 3}), x = at::randn({2, 3});
  EXPECT_TRUE(hooks.output("s", h, x).is_same(h));
  EXPECT_TRUE(hooks.weight("w", h).is_same(h));
  EXPECT_TRUE(hooks.input("e", h).is_same(h));
  EXPECT_FALSE(hooks.has_prefix("a"));
  EXPECT_THROW(hooks.prefix("a", 1), dt::Error);

  hooks.add_output("s", [](const at::Tensor& h, const at::Tensor&) { return h * 2; });
  hooks.add_output("s", [](const at::Tensor& h, const at::Tensor& x) { return h + x; });
  EXPECT_TRUE(at::allclose(hooks.output("s", h, x), h * 2 + x));  // registration order
  EXPECT_TRUE(hooks.output("other", h, x).is_same(h));
  hooks.add_input("e", [](const at::Tensor& e) { return e - 1; });
  EXPECT_TRUE(at::allclose(hooks.input("e", h), h - 1));
  EXPECT_FALSE(hooks.empty());
  hooks.clear();
  EXPECT_TRUE(hooks.empty());
}

TEST(HookSet, SecondWeightOrPrefixHookForOneNameIsRefusedByName) {
  HookSet hooks;
  hooks.set_weight("layer.q.weight", [](const at::Tensor& w) { return w; });
  try {
    hooks.set_weight("layer.q.weight", [](const at::Tensor& w) { return w; });
    FAIL() << "expected dt::Error";
  } catch (const dt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'layer.q.weight'"), std::string::npos) << e.what();
  }
  hooks.set_weight("layer.k.weight", [](const at::Tensor& w) { return w * 3; });
  EXPECT_TRUE(at::equal(hooks.weight("layer.k.weight", at::ones({2})), at::full({2}, 3.0)));
  hooks.set_prefix("attn", [](int64_t b) { return std::make_pair(at::zeros({b}), at::zeros({b})); });
  try {
    hooks.set_prefix("attn", [](int64_t b) { return std::make_pair(at::zeros({b}), at::zeros({b})); });
    FAIL() << "expected dt::Error";
  } catch (const dt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'attn'"), std::string::npos) << e.what();
  }
}

class LlamaHooks : public ::testing::Test {
 protected:
  void SetUp() override {
    model = load_backbone(testing::fixture("tiny.safetensors"), 0);
    at::manual_seed(4);
    batch.input_ids = at::randint(3, 96, {2, 7}, at::kLong);
    base = model->forward(batch).logits;
  }
  std::unique_ptr<Backbone> model;
  Batch batch;
  at::Tensor base;
};

TEST_F(LlamaHooks, OutputHookOnFfnOutEqualsZeroedDownProjection) {
  // Zeroing the FFN output of layer 1 through an output hook ...
  model->hooks().add_output("model.layers.1.mlp.ffn_out",
                            [](const at::Tensor& h, const at::Tensor&) { return at::zeros_like(h); });
  at::Tensor hooked = model->forward(batch).logits;
  model->hooks().clear();
  // ... equals zeroing its down projection through a weight hook.
  model->hooks().set_weight("model.layers.1.mlp.down_proj.weight",
                            [](const at::Tensor& w) { return at::zeros_like(w); });
  at::Tensor weighted = model->forward(batch).logits;
  model->hooks().clear();
  EXPECT_GT(testing::max_abs_diff(hooked, base), 1e-3);
  EXPECT_LT(testing::max_abs_diff(hooked, weighted), 1e-6);
  // And the hooks are gone after clear().
  EXPECT_TRUE(at::equal(model->forward(batch).logits, base));
}

TEST_F(LlamaHooks, WeightHookOnHeadScalesLogits) {
  model->hooks().set_weight("lm_head.weight", [](const at::Tensor& w) { return w * 2; });
  EXPECT_LT(testing::max_abs_diff(model->forward(batch).logits, base * 2), 1e-5);
}

TEST_F(LlamaHooks, QueryHookSeesTheNormedInputAsX) {
  // A LoRA-shaped hook h + x M on .q equals the weight hook W + M^T on q_proj.
  at::Tensor m = at::randn({32, 32}) * 0.1;
  model->hooks().add_output("model.layers.0.self_attn.q",
                            [m](const at::Tensor& h, const at::Tensor& x) { return h + at::matmul(x, m); });
  at::Tensor hooked = model->forward(batch).logits;
  model->hooks().clear();
  model->hooks().set_weight("model.layers.0.self_attn.q_proj.weight",
                            [m](const at::Tensor& w) { return w + m.t(); });
  at::Tensor weighted = model->forward(batch).logits;
  EXPECT_GT(testing::max_abs_diff(hooked, base), 1e-4);
  EXPECT_LT(testing::max_abs_diff(hooked, weighted), 1e-5);
}

TEST_F(LlamaHooks, EverySiteIsConsultedWithItsDeclaredSizes) {
  std::set<std::string> seen;
  const auto sites = model->sites();
  for (const auto& s : sites) {
    model->hooks().add_output(s.name, [&seen, s](const at::Tensor& h, const at::Tensor& x) {
      seen.insert(s.name);
      EXPECT_EQ(h.size(-1), s.out_features) << s.name;
      EXPECT_EQ(x.size(-1), s.in_features) << s.name;
      return h;
    });
  }
  // The embedding is an input site.
  model->hooks().add_input("model.embed_tokens", [&seen](const at::Tensor& e) {
    seen.insert("model.embed_tokens");
    return e;
  });
  at::Tensor out = model->forward(batch).logits;
  EXPECT_TRUE(at::equal(out, base));  // identity hooks change nothing
  for (const auto& s : sites) EXPECT_TRUE(seen.count(s.name)) << s.name << " never consulted";
}

TEST_F(LlamaHooks, InputHookMayPrependSoftTokens) {
  at::Tensor soft = at::randn({3, 32});
  model->hooks().add_input("model.embed_tokens", [soft](const at::Tensor& e) {
    return at::cat({soft.unsqueeze(0).expand({e.size(0), 3, 32}), e}, 1);
  });
  Batch b = batch;
  b.labels = batch.input_ids;
  ForwardResult r = model->forward(b);
  EXPECT_EQ(r.logits.sizes(), at::IntArrayRef({2, 10, 96}));
  EXPECT_TRUE(std::isfinite(r.loss.item<double>()));
  // Causal: the soft tokens' own logits do not depend on the real tokens.
  Batch other = batch;
  other.input_ids = (batch.input_ids + 1) % 96;
  EXPECT_TRUE(at::allclose(model->forward(other).logits.narrow(1, 0, 3), r.logits.narrow(1, 0, 3)));
}

TEST_F(LlamaHooks, PrefixOfCachedKeysValuesEqualsRunningThePrefixTokens) {
  // Prefix hooks that return the keys/values tokens A left in a KV cache make a forward over B
  // equal to the forward over A followed by B (rotary positions of B start after the prefix).
  auto& llama = dynamic_cast<LlamaBackbone&>(*model);
  at::Tensor a = at::randint(3, 96, {1, 4}, at::kLong), b = at::randint(3, 96, {1, 5}, at::kLong);
  KvCache cache = llama.new_cache(1, 4);
  llama.forward_step(a, cache);
  for (int64_t i = 0; i < llama.config().num_layers; ++i) {
    at::Tensor k = cache.k[i], v = cache.v[i];  // [1, kv_heads = 2, 4, 8]
    model->hooks().set_prefix("model.layers." + std::to_string(i) + ".self_attn",
                              [k, v](int64_t batch) { return std::make_pair(k.expand({batch, -1, -1, -1}), v.expand({batch, -1, -1, -1})); });
  }
  Batch only_b;
  only_b.input_ids = b;
  at::Tensor with_prefix = model->forward(only_b).logits;
  model->hooks().clear();
  Batch ab;
  ab.input_ids = at::cat({a, b}, 1);
  at::Tensor full = model->forward(ab).logits.narrow(1, 4, 5);
  EXPECT_LT(testing::max_abs_diff(with_prefix, full), 1e-5);
  // A wrongly shaped prefix is refused, naming the attention.
  model->hooks().set_prefix("model.layers.0.self_attn",
                            [](int64_t batch) { return std::make_pair(at::zeros({batch, 3, 2, 8}), at::zeros({batch, 3, 2, 8})); });
  try {
    model->forward(only_b);
    ADD_FAILURE() << "expected dt::Error";
  } catch (const dt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn"), std::string::npos);
  }
}

}  // namespace
}  // namespace dt::model
