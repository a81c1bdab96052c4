// tests/model/test_llama.cpp — the Llama backbone against an independent torch reference
// (scripts/make_llama_golden.py), the KV cache, loading from safetensors and its refusals.
#include "model/llama.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>

#include "model/llama2c.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "test_llama_util.h"

namespace dt::model {
namespace {

using testing::expect_usage_error;
using testing::fixture;
using testing::max_abs_diff;
using testing::scratch;

// Per-tensor tolerances: float32 through two layers of ~unit activations.
constexpr double kLogitTol = 2e-5;
constexpr double kHiddenTol = 2e-5;

LlamaBackbone& as_llama(std::unique_ptr<Backbone>& b) {
  auto* l = dynamic_cast<LlamaBackbone*>(b.get());
  EXPECT_NE(l, nullptr);
  return *l;
}

// Rows of `t` [B, T, ...] where mask [B, T] is 1, flattened to [N, ...].
at::Tensor valid(const at::Tensor& t, const at::Tensor& mask) { return t.index({mask.to(at::kBool)}); }

TEST(Llama, TinyMatchesReferenceLogitsHiddenStatesAndLoss) {
  auto model = load_backbone(fixture("tiny.safetensors"), 0);
  const ModelConfig& c = model->config();
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_FALSE(c.tie_word_embeddings);
  SafetensorsFile ref = SafetensorsFile::open(fixture("tiny_expected.safetensors"));
  Batch batch;
  batch.input_ids = ref.tensor("input_ids");
  batch.attention_mask = ref.tensor("attention_mask");
  batch.labels = ref.tensor("labels");
  ForwardOptions options;
  options.return_hidden_states = true;
  ForwardResult r = model->forward(batch, options);

  const at::Tensor mask = batch.attention_mask;
  const double logit_err = max_abs_diff(valid(r.logits, mask), valid(ref.tensor("logits"), mask));
  ASSERT_EQ(r.hidden_states.size(), 2u);
  const double h0 = max_abs_diff(valid(r.hidden_states[0], mask), valid(ref.tensor("hidden_0"), mask));
  const double h1 = max_abs_diff(valid(r.hidden_states[1], mask), valid(ref.tensor("hidden_1"), mask));
  const double loss_err = std::abs(r.loss.item<double>() - ref.tensor("loss").item<double>());
  std::printf("tiny golden max |err|: logits %.3g, hidden_0 %.3g, hidden_1 %.3g, loss %.3g\n",
              logit_err, h0, h1, loss_err);
  EXPECT_EQ(r.logits.sizes(), at::IntArrayRef({2, 9, 96}));
  EXPECT_LT(logit_err, kLogitTol);
  EXPECT_LT(h0, kHiddenTol);
  EXPECT_LT(h1, kHiddenTol);
  EXPECT_LT(loss_err, 1e-5);
}

TEST(Llama, TinyClassificationUsesLastNonPaddingToken) {
  auto model = load_backbone(fixture("tiny.safetensors"), 3);
  SafetensorsFile ref = SafetensorsFile::open(fixture("tiny_expected.safetensors"));
  Batch batch;
  batch.input_ids = ref.tensor("input_ids");
  batch.attention_mask = ref.tensor("attention_mask");
  batch.labels = ref.tensor("cls_labels");
  ForwardResult r = model->forward(batch);
  EXPECT_EQ(r.logits.sizes(), at::IntArrayRef({2, 3}));
  const double err = max_abs_diff(r.logits, ref.tensor("cls_logits"));
  std::printf("tiny classification max |err|: logits %.3g\n", err);
  EXPECT_LT(err, kLogitTol);
  EXPECT_NEAR(r.loss.item<double>(), ref.tensor("cls_loss").item<double>(), 1e-5);
  // score.weight is part of the parameters (after the backbone's), loaded from the file.
  auto params = model->named_parameters();
  EXPECT_EQ(params.back().first, "score.weight");
  EXPECT_TRUE(at::equal(params.back().second,
                        SafetensorsFile::open(fixture("tiny.safetensors")).tensor("score.weight")));
}

TEST(Llama, ParametersMatchDescribeAndSitesMatchDescribeSites) {
  for (const std::string name : {"tiny-llama", "stories260K"}) {
    at::manual_seed(0);
    auto model = load_backbone(name, 0);
    auto metas = describe(model->config());
    auto params = model->named_parameters();
    ASSERT_EQ(params.size(), metas.size()) << name;
    for (size_t i = 0; i < metas.size(); ++i) {
      EXPECT_EQ(params[i].first, metas[i].name);
      EXPECT_EQ(params[i].second.sizes(), at::IntArrayRef(metas[i].shape)) << metas[i].name;
      EXPECT_FALSE(params[i].second.requires_grad()) << metas[i].name;
    }
    EXPECT_EQ(model->sites().size(), describe_sites(model->config()).size());
  }
  // The same seed gives the same random init.
  at::manual_seed(5);
  auto a = load_backbone("tiny-llama", 2);
  at::manual_seed(5);
  auto b = load_backbone("tiny-llama", 2);
  for (size_t i = 0; i < a->named_parameters().size(); ++i)
    EXPECT_TRUE(at::equal(a->named_parameters()[i].second, b->named_parameters()[i].second));
}

TEST(Llama, KvCacheStepsEqualTheFullForward) {
  auto model = load_backbone(fixture("tiny.safetensors"), 0);
  LlamaBackbone& llama = as_llama(model);
  at::manual_seed(11);
  at::Tensor ids = at::randint(3, 96, {2, 12}, at::kLong);
  Batch batch;
  batch.input_ids = ids;
  at::Tensor full = model->forward(batch).logits;

  // One token at a time.
  KvCache cache = llama.new_cache(2, 16);
  std::vector<at::Tensor> steps;
  for (int64_t t = 0; t < 12; ++t) steps.push_back(llama.forward_step(ids.narrow(1, t, 1), cache));
  EXPECT_EQ(cache.length, 12);
  const double one_by_one = max_abs_diff(at::cat(steps, 1), full);
  // A prefill of 5 then chunks of 4 and 3.
  KvCache chunked = llama.new_cache(2, 12);
  at::Tensor parts = at::cat({llama.forward_step(ids.narrow(1, 0, 5), chunked),
                              llama.forward_step(ids.narrow(1, 5, 4), chunked),
                              llama.forward_step(ids.narrow(1, 9, 3), chunked)}, 1);
  const double chunk_err = max_abs_diff(parts, full);
  std::printf("kv cache vs full forward max |err|: one-by-one %.3g, chunked %.3g\n", one_by_one, chunk_err);
  EXPECT_LT(one_by_one, 1e-5);
  EXPECT_LT(chunk_err, 1e-5);
  // Past capacity is refused.
  EXPECT_THROW(llama.forward_step(ids.narrow(1, 0, 1), chunked), dt::Error);
}

TEST(Llama, LmLossIsShiftedCrossEntropyIgnoringMinus100) {
  at::manual_seed(2);
  auto model = load_backbone("tiny-llama", 0);
  at::Tensor ids = at::randint(0, 64, {2, 6}, at::kLong);
  Batch batch;
  batch.input_ids = ids;
  batch.labels = ids.clone();
  batch.labels.index_put_({0, 3}, -100);
  ForwardResult r = model->forward(batch);
  at::Tensor logp = at::log_softmax(r.logits, -1);
  double sum = 0;
  int n = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t + 1 < 6; ++t) {
      const int64_t y = batch.labels[b][t + 1].item<int64_t>();
      if (y == -100) continue;
      sum -= logp[b][t][y].item<double>();
      ++n;
    }
  EXPECT_EQ(n, 9);
  EXPECT_NEAR(r.loss.item<double>(), sum / n, 1e-5);
}

TEST(Llama, SafetensorsWeightsStayMappedViews) {
  auto model = load_backbone(fixture("tiny.safetensors"), 0);
  // Each float32 parameter points into a mapping of tiny.safetensors (/proc/self/maps), not a copy.
  std::ifstream maps("/proc/self/maps");
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find("tiny.safetensors") == std::string::npos) continue;
    uintptr_t lo = 0, hi = 0;
    std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi);
    ranges.emplace_back(lo, hi);
  }
  ASSERT_FALSE(ranges.empty());
  for (const auto& [name, p] : model->named_parameters()) {
    const auto addr = reinterpret_cast<uintptr_t>(p.data_ptr());
    bool inside = false;
    for (const auto& [lo, hi] : ranges) inside |= addr >= lo && addr < hi;
    EXPECT_TRUE(inside) << name << " was copied";
  }
}

TEST(Llama, RefusesMismatchedSafetensorsNamingEachTensor) {
  SafetensorsFile tiny = SafetensorsFile::open(fixture("tiny.safetensors"));
  auto variant = [&](const std::string& file, const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
    std::map<std::string, at::Tensor> t;
    for (const auto& e : tiny.entries()) t[e.name] = tiny.tensor(e.name);
    edit(t);
    const std::string path = scratch(file);
    save_safetensors(path, {t.begin(), t.end()}, tiny.metadata());
    return path;
  };
  std::string p = variant("missing.safetensors", [](auto& t) {
    t.erase("model.layers.1.mlp.up_proj.weight");
    t.erase("model.norm.weight");
  });
  expect_usage_error([&] { load_backbone(p, 0); },
                     {p, "missing tensors (2)", "model.layers.1.mlp.up_proj.weight", "model.norm.weight"});
  p = variant("unexpected.safetensors", [](auto& t) { t["model.layers.7.extra.weight"] = at::ones({2}); });
  expect_usage_error([&] { load_backbone(p, 0); }, {p, "unexpected tensors (1)", "model.layers.7.extra.weight"});
  p = variant("shape.safetensors", [](auto& t) { t["model.layers.0.self_attn.k_proj.weight"] = at::ones({32, 32}); });
  expect_usage_error([&] { load_backbone(p, 0); },
                     {p, "wrong shape", "model.layers.0.self_attn.k_proj.weight [32, 32] (expected [16, 32])"});
  // HF buffers are tolerated; an absent task head keeps its init.
  p = variant("buffers.safetensors", [](auto& t) {
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = at::ones({4});
    t.erase("score.weight");
  });
  EXPECT_NO_THROW(load_backbone(p, 3));
  // Without a config (no metadata, no config.json beside it) the file is refused, saying why.
  std::map<std::string, at::Tensor> t;
  for (const auto& e : tiny.entries()) t[e.name] = tiny.tensor(e.name);
  const std::string dir = scratch("noconfig");
  std::remove((dir + "/config.json").c_str());
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  p = dir + "/model.safetensors";
  save_safetensors(p, {t.begin(), t.end()});
  expect_usage_error([&] { load_backbone(p, 0); }, {p, "no model config", "config.json"});
  // ... and read with a HF config.json beside it.
  std::ofstream(dir + "/config.json") << R"({"vocab_size": 96, "hidden_size": 32, "intermediate_size": 88,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-05})";
  auto model = load_backbone(p, 0);
  EXPECT_EQ(model->config().num_kv_heads, 2);
  EXPECT_FALSE(model->config().tie_word_embeddings);
}

TEST(Llama, PermuteRotaryRowsMatchesHfConvert) {
  // One head of 8: Meta's interleaved pairs (0,1)(2,3)(4,5)(6,7) become HF's halves 0246|1357.
  at::Tensor w = at::arange(16, at::kFloat).view({16, 1});
  at::Tensor p = permute_rotary_rows(w, 2).view({16});
  std::vector<float> expect = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(p[i].item<float>(), expect[i]);
}

}  // namespace
}  // namespace dt::model

namespace dt::model {
namespace {

// Saving a backbone's parameters with config_metadata() and loading the file back reproduces it:
// the path `export` takes, for each architecture's factory.
TEST(LoadBackbone, SavedParametersWithConfigMetadataLoadBack) {
  for (const std::string name : {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "tiny-bert"}) {
    at::manual_seed(9);
    auto original = load_backbone(name, 0);
    const std::string path = testing::scratch(name + ".safetensors");
    auto params = original->named_parameters();
    if (original->config().arch == Arch::Bert) {
      // HF's BertForSequenceClassification layout: "bert." prefix and pretraining heads.
      for (auto& [n, t] : params) n = "bert." + n;
      params.emplace_back("cls.predictions.bias", at::zeros({64}));
    }
    save_safetensors(path, params, config_metadata(original->config()));
    auto loaded = load_backbone(path, 0);
    EXPECT_EQ(loaded->config().arch, original->config().arch) << name;
    EXPECT_EQ(loaded->config().gated_ffn, original->config().gated_ffn) << name;
    EXPECT_EQ(loaded->config().tie_word_embeddings, original->config().tie_word_embeddings) << name;
    EXPECT_EQ(loaded->config().num_decoder_layers, original->config().num_decoder_layers) << name;
    const auto a = original->named_parameters(), b = loaded->named_parameters();
    ASSERT_EQ(a.size(), b.size()) << name;
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << name << " " << a[i].first;
    }
  }
}

TEST(LoadBackbone, HalfPrecisionFilesAreConvertedToFloat) {
  // A bf16 file loads as float32 parameters holding exactly the bf16 values: the same model as a
  // float32 file of the rounded weights.
  SafetensorsFile tiny = SafetensorsFile::open(testing::fixture("tiny.safetensors"));
  std::vector<std::pair<std::string, at::Tensor>> bf16, rounded;
  for (const auto& e : tiny.entries()) {
    bf16.emplace_back(e.name, tiny.tensor(e.name).to(at::kBFloat16));
    rounded.emplace_back(e.name, bf16.back().second.to(at::kFloat));
  }
  const std::string bf16_path = testing::scratch("tiny_bf16.safetensors");
  const std::string f32_path = testing::scratch("tiny_rounded.safetensors");
  save_safetensors(bf16_path, bf16, tiny.metadata());
  save_safetensors(f32_path, rounded, tiny.metadata());
  auto model = load_backbone(bf16_path, 0);
  for (const auto& [name, t] : model->named_parameters()) EXPECT_EQ(t.scalar_type(), at::kFloat) << name;
  Batch batch;
  batch.input_ids = at::arange(3, 12, at::kLong).view({1, 9});
  at::Tensor logits = model->forward(batch).logits;
  EXPECT_TRUE(at::equal(logits, load_backbone(f32_path, 0)->forward(batch).logits));
  EXPECT_GT(testing::max_abs_diff(logits, load_backbone(testing::fixture("tiny.safetensors"), 0)->forward(batch).logits), 0.0);
}

}  // namespace
}  // namespace dt::model
