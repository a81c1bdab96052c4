// T5Backbone's contract with methods: HF names, the sites of describe_sites all consulted, weight,
// prefix and input hooks behaving as hooks.h says, dropout only in training, gradients everywhere.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "model/config.h"
#include "model/t5.h"
#include "util/error.h"

namespace dt::model {
namespace {

Batch tiny_batch(int64_t vocab) {
  torch::manual_seed(3);
  Batch b;
  b.input_ids = torch::randint(2, vocab, {2, 7}, torch::kLong);
  b.attention_mask = torch::ones({2, 7}, torch::kLong);
  b.attention_mask.index_put_({1, torch::indexing::Slice(5)}, 0);
  b.labels = torch::randint(2, vocab, {2, 4}, torch::kLong);
  return b;
}

class T5Hooks : public ::testing::TestWithParam<std::string> {};

TEST_P(T5Hooks, ParametersAreTheMetaDescription) {
  const ModelConfig c = named_config(GetParam());
  torch::manual_seed(0);
  T5Backbone t5(c, 0);
  const auto params = t5.named_parameters();
  const auto metas = describe(c);
  ASSERT_EQ(params.size(), metas.size());
  for (size_t i = 0; i < metas.size(); ++i) {
    EXPECT_EQ(params[i].first, metas[i].name);
    EXPECT_EQ(params[i].second.sizes().vec(), metas[i].shape) << metas[i].name;
  }
  T5Backbone classifier(c, 2, T5Head::Classifier);
  const auto with_head = classifier.named_parameters();
  ASSERT_EQ(with_head.size(), metas.size() + 2);
  EXPECT_EQ(with_head[metas.size()].first, "classifier.weight");
  EXPECT_EQ(with_head[metas.size() + 1].first, "classifier.bias");
}

TEST_P(T5Hooks, EverySiteIsConsulted) {
  const ModelConfig c = named_config(GetParam());
  T5Backbone t5(c, 0);
  const auto sites = t5.sites();
  const auto expected = describe_sites(c);
  ASSERT_EQ(sites.size(), expected.size());
  std::map<std::string, int> calls;
  for (const SiteInfo& s : sites) {
    calls[s.name] = 0;
    if (s.kind == SiteKind::Embedding) {
      t5.hooks().add_input(s.name, [&calls, name = s.name](const at::Tensor& e) { ++calls[name]; return e; });
    } else {
      t5.hooks().add_output(s.name, [&calls, name = s.name, out = s.out_features](const at::Tensor& h,
                                                                               const at::Tensor&) {
        ++calls[name];
        EXPECT_EQ(h.size(-1), out) << name;  // out_features is the real width at the site
        return h;
      });
    }
  }
  t5.forward(tiny_batch(c.vocab_size));
  for (const auto& [name, n] : calls) EXPECT_EQ(n, 1) << name;
}

TEST_P(T5Hooks, WeightHookEqualsChangingTheWeight) {
  const ModelConfig c = named_config(GetParam());
  torch::manual_seed(1);
  T5Backbone t5(c, 0);
  const Batch batch = tiny_batch(c.vocab_size);
  const std::string q = "decoder.block.1.layer.1.EncDecAttention.q.weight";
  t5.hooks().set_weight(q, [](const at::Tensor& w) { return w * 1.5; });
  const at::Tensor hooked = t5.forward(batch).logits.detach();
  t5.hooks().clear();
  const at::Tensor plain = t5.forward(batch).logits.detach();
  for (auto& [name, p] : t5.named_parameters()) {
    if (name == q) {
      torch::NoGradGuard no_grad;
      p.mul_(1.5);
    }
  }
  const at::Tensor changed = t5.forward(batch).logits.detach();
  EXPECT_GT((hooked - plain).abs().max().item<double>(), 1e-4);
  EXPECT_LT((hooked - changed).abs().max().item<double>(), 1e-5);
}

// A prompt hook that prepends the embeddings of real tokens equals prepending the tokens.
TEST_P(T5Hooks, PromptInputHookEqualsPrependedTokens) {
  const ModelConfig c = named_config(GetParam());
  torch::manual_seed(2);
  T5Backbone t5(c, 0);
  const Batch batch = tiny_batch(c.vocab_size);
  const at::Tensor prompt_ids = torch::tensor({{5, 9, 11}, {5, 9, 11}}, torch::kLong);
  at::Tensor shared;
  for (auto& [name, p] : t5.named_parameters()) {
    if (name == "shared.weight") shared = p;
  }
  Batch longer = batch;
  longer.input_ids = torch::cat({prompt_ids, batch.input_ids}, 1);
  longer.attention_mask = torch::cat({torch::ones({2, 3}, torch::kLong), batch.attention_mask}, 1);
  const at::Tensor want = t5.forward(longer).logits.detach();
  t5.hooks().add_input("shared", [&](const at::Tensor& e) {
    return torch::cat({torch::embedding(shared, prompt_ids), e}, 1);
  });
  const at::Tensor got = t5.forward(batch).logits.detach();
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-5);
}

TEST_P(T5Hooks, PrefixHookTrainsAndChangesOutput) {
  const ModelConfig c = named_config(GetParam());
  torch::manual_seed(4);
  T5Backbone t5(c, 0);
  const Batch batch = tiny_batch(c.vocab_size);
  const at::Tensor plain = t5.forward(batch).logits.detach();
  const at::Tensor kp = torch::randn({1, c.num_heads, 2, c.d_kv}, torch::requires_grad());
  const at::Tensor vp = torch::randn({1, c.num_heads, 2, c.d_kv}, torch::requires_grad());
  for (const char* a : {"encoder.block.1.layer.0.SelfAttention", "decoder.block.0.layer.0.SelfAttention",
                        "decoder.block.1.layer.1.EncDecAttention"}) {
    t5.hooks().set_prefix(a, [&](int64_t b) {
      return std::make_pair(kp.expand({b, -1, -1, -1}), vp.expand({b, -1, -1, -1}));
    });
  }
  const ForwardResult r = t5.forward(batch);
  EXPECT_GT((r.logits.detach() - plain).abs().max().item<double>(), 1e-4);
  r.loss.backward();
  ASSERT_TRUE(kp.grad().defined());
  EXPECT_GT(kp.grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(vp.grad().abs().sum().item<double>(), 0.0);
}

TEST_P(T5Hooks, DropoutOnlyInTrainingAndGradientsReachEveryParameter) {
  const ModelConfig c = named_config(GetParam());
  torch::manual_seed(5);
  T5Backbone t5(c, 0);
  const Batch batch = tiny_batch(c.vocab_size);
  EXPECT_TRUE(t5.forward(batch).logits.equal(t5.forward(batch).logits));
  t5.set_training(true);
  EXPECT_FALSE(t5.forward(batch).logits.equal(t5.forward(batch).logits));
  t5.set_training(false);
  t5.forward(batch).loss.backward();
  for (auto& [name, p] : t5.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0) << name;
  }
}

TEST(T5, LabelWordsAreRequiredForClassification) {
  T5Backbone t5(named_config("tiny-t5"), 2);
  EXPECT_THROW(t5.forward(tiny_batch(64)), dt::Error);
  EXPECT_THROW(t5.set_label_token_ids({1, 64}), dt::Error);  // outside the vocabulary
  t5.set_label_token_ids({3, 4});
  Batch b = tiny_batch(64);
  b.labels = torch::tensor({1, 0}, torch::kLong);
  const ForwardResult r = t5.forward(b);
  EXPECT_EQ(r.logits.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_TRUE(r.loss.defined());
}

INSTANTIATE_TEST_SUITE_P(Tiny, T5Hooks, ::testing::Values("tiny-t5", "tiny-t5-v1_1"));

}  // namespace
}  // namespace dt::model
