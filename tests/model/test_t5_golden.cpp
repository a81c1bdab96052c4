// T5 v1.0 and v1.1 against the independent reference of scripts/make_t5_bert_golden.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

#include "model/config.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "model/t5.h"

namespace dt::model::testing {

std::string fixture(const std::string& relative) {
  const char* env = std::getenv("DELTATUNE_SOURCE_DIR");
  return std::string(env ? env : DT_SOURCE_DIR) + "/tests/fixtures/" + relative;
}

std::string source_file(const std::string& relative) {
  const char* env = std::getenv("DELTATUNE_SOURCE_DIR");
  return std::string(env ? env : DT_SOURCE_DIR) + "/" + relative;
}

// Copies every parameter of `backbone` from `file` (same name, same shape); task-head parameters
// (classifier.*) may be absent. Returns the names of the file that the backbone does not have.
std::set<std::string> load_by_name(Backbone& backbone, const SafetensorsFile& file) {
  torch::NoGradGuard no_grad;
  std::set<std::string> unused;
  for (const auto& e : file.entries()) unused.insert(e.name);
  for (auto& [name, param] : backbone.named_parameters()) {
    if (!file.contains(name)) {
      if (name.rfind("classifier.", 0) == 0) continue;
      ADD_FAILURE() << file.path() << " lacks " << name;
      continue;
    }
    const at::Tensor t = file.tensor(name);
    EXPECT_EQ(t.sizes(), param.sizes()) << name;
    if (t.sizes() == param.sizes()) param.copy_(t);
    unused.erase(name);
  }
  return unused;
}

double max_abs_err(const at::Tensor& got, const at::Tensor& want) {
  EXPECT_EQ(got.sizes(), want.sizes());
  if (got.sizes() != want.sizes()) return 1e30;
  return (got.detach().to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
}

}  // namespace dt::model::testing

namespace dt::model {
namespace {

using testing::fixture;
using testing::load_by_name;
using testing::max_abs_err;

constexpr double kTol = 1e-4;

// The reference's LM batch: ids, mask and labels (the decoder input is the labels shifted right).
Batch golden_lm_batch(const SafetensorsFile& golden) {
  Batch batch;
  batch.input_ids = golden.tensor("input_ids");
  batch.attention_mask = golden.tensor("attention_mask");
  batch.labels = golden.tensor("labels");
  return batch;
}

class T5Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(T5Golden, LmMatchesReference) {
  const std::string name = GetParam();
  const ModelConfig config = named_config(name);
  T5Backbone t5(config, 0);
  const auto weights = SafetensorsFile::open(fixture("t5/" + name + ".safetensors"));
  EXPECT_TRUE(load_by_name(t5, weights).empty()) << "the fixture holds tensors T5Backbone lacks";
  const auto golden = SafetensorsFile::open(fixture("t5/" + name + ".golden.safetensors"));

  const Batch batch = golden_lm_batch(golden);
  ForwardOptions options;
  options.return_hidden_states = true;
  const ForwardResult r = t5.forward(batch, options);

  ASSERT_EQ(r.hidden_states.size(), static_cast<size_t>(config.num_layers + config.num_decoder_layers));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const double err = max_abs_err(r.hidden_states[i], golden.tensor("encoder.hidden." + std::to_string(i)));
    std::printf("%s encoder.hidden.%ld max abs err %.3g\n", name.c_str(), static_cast<long>(i), err);
    EXPECT_LT(err, kTol);
  }
  for (int64_t i = 0; i < config.num_decoder_layers; ++i) {
    const double err = max_abs_err(r.hidden_states[config.num_layers + i],
                                   golden.tensor("decoder.hidden." + std::to_string(i)));
    std::printf("%s decoder.hidden.%ld max abs err %.3g\n", name.c_str(), static_cast<long>(i), err);
    EXPECT_LT(err, kTol);
  }
  const double logits_err = max_abs_err(r.logits, golden.tensor("logits"));
  const double loss_err = max_abs_err(r.loss, golden.tensor("loss"));
  std::printf("%s logits max abs err %.3g, loss %.6f err %.3g\n", name.c_str(), logits_err, r.loss.item<double>(),
              loss_err);
  EXPECT_LT(logits_err, kTol);
  EXPECT_LT(loss_err, kTol);
}

// Classification the T5 way: one decoder step from the start token, logits at the label words.
TEST_P(T5Golden, LabelWordsAreTheFirstDecoderStep) {
  const std::string name = GetParam();
  T5Backbone t5(named_config(name), 3);
  load_by_name(t5, SafetensorsFile::open(fixture("t5/" + name + ".safetensors")));
  const auto golden = SafetensorsFile::open(fixture("t5/" + name + ".golden.safetensors"));
  const std::vector<int64_t> words = {7, 30, 12};
  t5.set_label_token_ids(words);
  Batch batch;
  batch.input_ids = golden.tensor("input_ids");
  batch.attention_mask = golden.tensor("attention_mask");
  batch.labels = torch::tensor({2, 0}, torch::kLong);
  const ForwardResult r = t5.forward(batch);
  // The reference decoder input starts with the start token, and step 0 sees only that token.
  const at::Tensor step0 = golden.tensor("logits").select(1, 0);
  const at::Tensor word_ids = torch::tensor(words, torch::kLong);
  EXPECT_LT(max_abs_err(r.logits, step0.index_select(1, word_ids)), kTol);
  const at::Tensor want_loss = torch::cross_entropy_loss(step0, torch::tensor({12, 7}, torch::kLong));
  EXPECT_LT(max_abs_err(r.loss, want_loss), kTol);
}

TEST_P(T5Golden, ClassifierHeadOnPooledEncoder) {
  const std::string name = GetParam();
  T5Backbone t5(named_config(name), 3, T5Head::Classifier);
  const auto golden = SafetensorsFile::open(fixture("t5/" + name + ".golden.safetensors"));
  load_by_name(t5, SafetensorsFile::open(fixture("t5/" + name + ".safetensors")));
  {
    torch::NoGradGuard no_grad;
    for (auto& [pname, p] : t5.named_parameters()) {
      if (pname.rfind("classifier.", 0) == 0) p.copy_(golden.tensor("head." + pname));
    }
  }
  Batch batch;
  batch.input_ids = golden.tensor("input_ids");
  batch.attention_mask = golden.tensor("attention_mask");
  const ForwardResult r = t5.forward(batch);
  const double err = max_abs_err(r.logits, golden.tensor("head.logits"));
  std::printf("%s classifier logits max abs err %.3g\n", name.c_str(), err);
  EXPECT_LT(err, kTol);
}

// The fixture as a checkpoint: model::load_backbone reads the config from the file's __metadata__
// (HF config.json keys), builds a T5Backbone and installs the weights by name.
TEST_P(T5Golden, LoadBackboneReadsTheFixture) {
  const std::string name = GetParam();
  const ModelConfig want = named_config(name);
  const auto backbone = load_backbone(fixture("t5/" + name + ".safetensors"), 0);
  const ModelConfig& got = backbone->config();
  EXPECT_EQ(got.arch, Arch::T5);
  EXPECT_EQ(describe(got).size(), describe(want).size());
  EXPECT_EQ(total_params(describe(got)), total_params(describe(want)));
  EXPECT_EQ(got.gated_ffn, want.gated_ffn);
  EXPECT_EQ(got.tie_word_embeddings, want.tie_word_embeddings);
  EXPECT_EQ(got.activation, want.activation);
  EXPECT_EQ(got.relative_attention_num_buckets, want.relative_attention_num_buckets);
  EXPECT_EQ(got.relative_attention_max_distance, want.relative_attention_max_distance);
  const auto golden = SafetensorsFile::open(fixture("t5/" + name + ".golden.safetensors"));
  const Batch batch = golden_lm_batch(golden);
  const ForwardResult r = backbone->forward(batch);
  EXPECT_LT(max_abs_err(r.logits, golden.tensor("logits")), kTol);
  EXPECT_LT(max_abs_err(r.loss, golden.tensor("loss")), kTol);
}

// A bf16 file: the backbone's tensors are the mapped file's bytes (bf16, no copy: two tensors lie as
// far apart as in the file), the forward computes in bf16 (logits and loss float32) and stays close to
// float32 with the same bf16-rounded weights; backward runs.
TEST_P(T5Golden, Bf16FileIsMappedAndComputesInBf16) {
  const std::string name = GetParam();
  const auto f32 = load_backbone(fixture("t5/" + name + ".safetensors"), 0);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  {
    torch::NoGradGuard no_grad;
    for (auto& [n, p] : f32->named_parameters()) {
      tensors.emplace_back(n, p.to(torch::kBFloat16));
      p.copy_(p.to(torch::kBFloat16).to(torch::kFloat));  // the float32 reference of the same weights
    }
  }
  const std::string path = ::testing::TempDir() + "/dt_t5_bf16_" + name + ".safetensors";
  save_safetensors(path, tensors, config_metadata(f32->config()));
  const auto bf = load_backbone(path, 0);
  EXPECT_EQ(bf->config().dtype, torch::kBFloat16);
  std::map<std::string, at::Tensor> params;
  for (const auto& [n, p] : bf->named_parameters()) {
    EXPECT_EQ(p.scalar_type(), torch::kBFloat16) << n;
    params[n] = p;
  }
  const auto file = SafetensorsFile::open(path);
  const auto& e0 = file.entries().front();
  for (const auto& e : file.entries()) {
    const auto* a = static_cast<const char*>(params.at(e0.name).data_ptr());
    const auto* b = static_cast<const char*>(params.at(e.name).data_ptr());
    EXPECT_EQ(b - a, static_cast<std::ptrdiff_t>(e.begin - e0.begin)) << e.name << " is not a view of the mapping";
    EXPECT_TRUE(at::equal(params.at(e.name), file.tensor(e.name))) << e.name;
  }
  const auto golden = SafetensorsFile::open(fixture("t5/" + name + ".golden.safetensors"));
  const Batch batch = golden_lm_batch(golden);
  const ForwardResult want = f32->forward(batch);
  const ForwardResult got = bf->forward(batch);
  EXPECT_EQ(got.logits.scalar_type(), torch::kFloat);
  EXPECT_EQ(got.loss.scalar_type(), torch::kFloat);
  const double scale = want.logits.abs().max().item<double>();
  EXPECT_LT(max_abs_err(got.logits, want.logits), 0.05 * scale + 0.05);
  EXPECT_NEAR(got.loss.item<double>(), want.loss.item<double>(), 0.05 * std::abs(want.loss.item<double>()) + 0.02);
  got.loss.backward();
  const at::Tensor g = params.at("encoder.block.0.layer.0.SelfAttention.q.weight").grad();
  ASSERT_TRUE(g.defined());
  EXPECT_EQ(g.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(at::isfinite(g).all().item<bool>());
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Tiny, T5Golden, ::testing::Values("tiny-t5", "tiny-t5-v1_1"));

}  // namespace
}  // namespace dt::model
