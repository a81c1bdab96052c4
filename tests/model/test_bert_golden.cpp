// BERT against the independent reference of scripts/make_t5_bert_golden.py, and its hook contract.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <set>

#include "model/bert.h"
#include "model/config.h"
#include "model/load.h"
#include "model/safetensors.h"

namespace dt::model::testing {
// In test_t5_golden.cpp.
std::string fixture(const std::string& relative);
std::set<std::string> load_by_name(Backbone& backbone, const SafetensorsFile& file);
double max_abs_err(const at::Tensor& got, const at::Tensor& want);
}  // namespace dt::model::testing

namespace dt::model {
namespace {

using testing::fixture;
using testing::load_by_name;
using testing::max_abs_err;

constexpr double kTol = 1e-4;

Batch golden_batch(const SafetensorsFile& golden) {
  Batch b;
  b.input_ids = golden.tensor("input_ids");
  b.attention_mask = golden.tensor("attention_mask");
  b.labels = golden.tensor("labels");
  return b;
}

TEST(BertGolden, ClassifierMatchesReference) {
  const ModelConfig config = named_config("tiny-bert");
  BertBackbone bert(config, 3);
  EXPECT_TRUE(load_by_name(bert, SafetensorsFile::open(fixture("bert/tiny-bert.safetensors"))).empty());
  const auto golden = SafetensorsFile::open(fixture("bert/tiny-bert.golden.safetensors"));
  ForwardOptions options;
  options.return_hidden_states = true;
  const ForwardResult r = bert.forward(golden_batch(golden), options);
  ASSERT_EQ(r.hidden_states.size(), static_cast<size_t>(config.num_layers));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const double err = max_abs_err(r.hidden_states[i], golden.tensor("encoder.hidden." + std::to_string(i)));
    std::printf("tiny-bert encoder.hidden.%ld max abs err %.3g\n", static_cast<long>(i), err);
    EXPECT_LT(err, kTol);
  }
  const double logits_err = max_abs_err(r.logits, golden.tensor("logits"));
  const double loss_err = max_abs_err(r.loss, golden.tensor("loss"));
  std::printf("tiny-bert logits max abs err %.3g, loss %.6f err %.3g\n", logits_err, r.loss.item<double>(), loss_err);
  EXPECT_LT(logits_err, kTol);
  EXPECT_LT(loss_err, kTol);
}

TEST(BertGolden, PooledOutputWithoutHead) {
  BertBackbone bert(named_config("tiny-bert"), 0);
  const std::set<std::string> unused = load_by_name(bert, SafetensorsFile::open(fixture("bert/tiny-bert.safetensors")));
  EXPECT_EQ(unused, (std::set<std::string>{"classifier.bias", "classifier.weight"}));
  const auto golden = SafetensorsFile::open(fixture("bert/tiny-bert.golden.safetensors"));
  const double err = max_abs_err(bert.forward(golden_batch(golden)).logits, golden.tensor("pooled"));
  std::printf("tiny-bert pooled max abs err %.3g\n", err);
  EXPECT_LT(err, kTol);
}

// Sentence pairs: token_type_ids select the type embedding (segment B = 1), as HF's BertEmbeddings.
TEST(BertGolden, SentencePairTokenTypesMatchReference) {
  BertBackbone bert(named_config("tiny-bert"), 3);
  EXPECT_TRUE(load_by_name(bert, SafetensorsFile::open(fixture("bert/tiny-bert.safetensors"))).empty());
  const auto golden = SafetensorsFile::open(fixture("bert/tiny-bert.golden.safetensors"));
  Batch b = golden_batch(golden);
  b.token_type_ids = golden.tensor("token_type_ids");
  ASSERT_GT(b.token_type_ids.sum().item<int64_t>(), 0);
  const ForwardResult r = bert.forward(b);
  EXPECT_LT(max_abs_err(r.logits, golden.tensor("pair.logits")), kTol);
  EXPECT_LT(max_abs_err(r.loss, golden.tensor("pair.loss")), kTol);
  // And they matter: the single-segment logits differ.
  EXPECT_GT(max_abs_err(r.logits, golden.tensor("logits")), 1e-3);
}

// The fixture as a checkpoint (config from __metadata__, classifier.* included) via model::load_backbone.
TEST(BertGolden, LoadBackboneReadsTheFixture) {
  const auto backbone = load_backbone(fixture("bert/tiny-bert.safetensors"), 3);
  EXPECT_EQ(backbone->config().arch, Arch::Bert);
  EXPECT_EQ(total_params(describe(backbone->config())), total_params(describe(named_config("tiny-bert"))));
  const auto golden = SafetensorsFile::open(fixture("bert/tiny-bert.golden.safetensors"));
  const ForwardResult r = backbone->forward(golden_batch(golden));
  EXPECT_LT(max_abs_err(r.logits, golden.tensor("logits")), kTol);
  EXPECT_LT(max_abs_err(r.loss, golden.tensor("loss")), kTol);
}

TEST(Bert, ParametersAndSites) {
  const ModelConfig c = named_config("tiny-bert");
  BertBackbone bert(c, 2);
  const auto params = bert.named_parameters();
  const auto metas = describe(c);
  ASSERT_EQ(params.size(), metas.size() + 2);
  for (size_t i = 0; i < metas.size(); ++i) EXPECT_EQ(params[i].first, metas[i].name);
  EXPECT_EQ(params[metas.size()].first, "classifier.weight");

  std::map<std::string, int> calls;
  for (const SiteInfo& s : bert.sites()) {
    calls[s.name] = 0;
    if (s.kind == SiteKind::Embedding) {
      bert.hooks().add_input(s.name, [&calls, name = s.name](const at::Tensor& e) { ++calls[name]; return e; });
    } else {
      bert.hooks().add_output(s.name, [&calls, name = s.name, out = s.out_features](const at::Tensor& h,
                                                                               const at::Tensor&) {
        ++calls[name];
        EXPECT_EQ(h.size(-1), out) << name;
        return h;
      });
    }
  }
  ASSERT_EQ(calls.size(), describe_sites(c).size());
  Batch b;
  b.input_ids = torch::randint(1, c.vocab_size, {2, 5}, torch::kLong);
  b.labels = torch::tensor({1, 0}, torch::kLong);
  bert.forward(b).loss.backward();
  for (const auto& [name, n] : calls) EXPECT_EQ(n, 1) << name;
  for (auto& [name, p] : bert.named_parameters()) {
    if (name.find("token_type") != std::string::npos) continue;  // row 1 unused: single-segment inputs
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0) << name;
  }
}

// A prompt hook that prepends the embeddings of real tokens equals prepending the tokens.
TEST(Bert, PromptInputHookEqualsPrependedTokens) {
  const ModelConfig c = named_config("tiny-bert");
  torch::manual_seed(7);
  BertBackbone bert(c, 2);
  Batch b;
  b.input_ids = torch::randint(1, c.vocab_size, {2, 6}, torch::kLong);
  b.attention_mask = torch::tensor({{1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 0, 0}}, torch::kLong);
  const at::Tensor prompt = torch::tensor({{4, 8}, {4, 8}}, torch::kLong);
  Batch longer = b;
  longer.input_ids = torch::cat({prompt, b.input_ids}, 1);
  longer.attention_mask = torch::cat({torch::ones({2, 2}, torch::kLong), b.attention_mask}, 1);
  const at::Tensor want = bert.forward(longer).logits.detach();
  at::Tensor words;
  for (auto& [name, p] : bert.named_parameters()) {
    if (name == "embeddings.word_embeddings.weight") words = p;
  }
  bert.hooks().add_input("embeddings", [&](const at::Tensor& e) {
    return torch::cat({torch::embedding(words, prompt), e}, 1);
  });
  EXPECT_LT((bert.forward(b).logits.detach() - want).abs().max().item<double>(), 1e-5);
}

}  // namespace
}  // namespace dt::model
