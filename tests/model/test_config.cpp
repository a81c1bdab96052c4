// Named configs and describe(): the published parameter totals, HF names, no allocation needed.
#include <gtest/gtest.h>

#include <algorithm>

#include "model/config.h"
#include "util/error.h"

namespace dt::model {
namespace {

int64_t count(const std::string& name) { return total_params(describe(named_config(name))); }

bool has(const std::vector<TensorMeta>& metas, const std::string& name) {
  return std::any_of(metas.begin(), metas.end(), [&](const TensorMeta& m) { return m.name == name; });
}

const TensorMeta& find(const std::vector<TensorMeta>& metas, const std::string& name) {
  auto it = std::find_if(metas.begin(), metas.end(), [&](const TensorMeta& m) { return m.name == name; });
  if (it == metas.end()) throw std::runtime_error("no tensor " + name);
  return *it;
}

// Published totals (HF model cards / num_parameters(); the tied T5 counts shared.weight once).
TEST(Config, PublishedT5Totals) {
  EXPECT_EQ(count("t5-small"), 60506624);
  EXPECT_EQ(count("t5-base"), 222903552);
  EXPECT_EQ(count("t5-large"), 737668096);
  EXPECT_EQ(count("t5-3b"), 2851598336);
  EXPECT_EQ(count("t5-11b"), 11307321344);
}

TEST(Config, PublishedBertAndStoriesTotals) {
  EXPECT_EQ(count("bert-base"), 109482240);  // BertModel with pooler
  EXPECT_EQ(count("stories260K"), 260032);   // the llama2.c file's float count (PROVENANCE.md)
}

TEST(Config, T5NamesFollowHf) {
  const auto metas = describe(named_config("t5-small"));
  EXPECT_EQ(metas.front().name, "shared.weight");
  EXPECT_EQ(metas.back().name, "decoder.final_layer_norm.weight");
  EXPECT_TRUE(has(metas, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
  EXPECT_FALSE(has(metas, "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"));
  EXPECT_TRUE(has(metas, "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
  EXPECT_FALSE(has(metas, "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"));
  EXPECT_TRUE(has(metas, "decoder.block.5.layer.1.EncDecAttention.o.weight"));
  EXPECT_TRUE(has(metas, "decoder.block.5.layer.2.DenseReluDense.wi.weight"));
  EXPECT_FALSE(has(metas, "lm_head.weight"));  // tied
  // shared + 6 x 8 encoder + final norm + 6 x 13 decoder + final norm + the two relative-bias tables.
  EXPECT_EQ(metas.size(), 1u + 6 * 8 + 1 + 6 * 13 + 1 + 2);
  EXPECT_EQ(find(metas, "encoder.block.3.layer.1.DenseReluDense.wo.weight").shape, (std::vector<int64_t>{512, 2048}));
  EXPECT_EQ(find(metas, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight").shape,
            (std::vector<int64_t>{32, 8}));
}

TEST(Config, T5V11IsGatedAndUntied) {
  const ModelConfig c = named_config("t5-v1_1-small");
  EXPECT_TRUE(c.gated_ffn);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.activation, "gelu_new");
  const auto metas = describe(c);
  EXPECT_EQ(metas.back().name, "lm_head.weight");
  EXPECT_TRUE(has(metas, "encoder.block.7.layer.1.DenseReluDense.wi_0.weight"));
  EXPECT_TRUE(has(metas, "decoder.block.7.layer.2.DenseReluDense.wi_1.weight"));
  EXPECT_FALSE(has(metas, "encoder.block.0.layer.1.DenseReluDense.wi.weight"));
  EXPECT_EQ(find(metas, "encoder.block.0.layer.0.SelfAttention.q.weight").shape, (std::vector<int64_t>{384, 512}));
  for (const char* name : {"t5-v1_1-base", "t5-v1_1-large", "t5-v1_1-xl", "t5-v1_1-xxl"}) {
    EXPECT_TRUE(named_config(name).gated_ffn) << name;
  }
  // Published totals of google/t5-v1_1-* (untied: shared.weight and lm_head.weight both count).
  EXPECT_EQ(count("t5-v1_1-small"), 76961152);
  EXPECT_EQ(count("t5-v1_1-base"), 247577856);
  EXPECT_EQ(count("t5-v1_1-large"), 783150080);
  EXPECT_EQ(count("t5-v1_1-xl"), 2849757184);
  EXPECT_EQ(count("t5-v1_1-xxl"), 11135332352);
}

TEST(Config, BertNames) {
  const auto metas = describe(named_config("bert-base"));
  EXPECT_EQ(metas.front().name, "embeddings.word_embeddings.weight");
  EXPECT_EQ(metas.back().name, "pooler.dense.bias");
  EXPECT_TRUE(has(metas, "encoder.layer.11.attention.self.value.bias"));
  EXPECT_TRUE(has(metas, "encoder.layer.0.attention.output.LayerNorm.weight"));
  EXPECT_EQ(find(metas, "encoder.layer.0.intermediate.dense.weight").shape, (std::vector<int64_t>{3072, 768}));
  EXPECT_EQ(find(metas, "embeddings.token_type_embeddings.weight").shape, (std::vector<int64_t>{2, 768}));
}

TEST(Config, LlamaNamesAndGroupedQueryAttention) {
  const ModelConfig c = named_config("tiny-llama");
  EXPECT_LT(c.num_kv_heads, c.num_heads);
  const auto metas = describe(c);
  EXPECT_EQ(metas.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(metas.back().name, "lm_head.weight");  // tiny-llama is untied
  EXPECT_EQ(find(metas, "model.layers.1.self_attn.k_proj.weight").shape,
            (std::vector<int64_t>{c.num_kv_heads * c.d_kv, c.d_model}));
  const auto stories = describe(named_config("stories260K"));
  EXPECT_FALSE(has(stories, "lm_head.weight"));  // tied
  EXPECT_EQ(find(stories, "model.layers.4.mlp.down_proj.weight").shape, (std::vector<int64_t>{64, 172}));
}

TEST(Config, EveryNamedConfigDescribes) {
  for (const std::string& name : named_config_names()) {
    const ModelConfig c = named_config(name);
    EXPECT_EQ(c.name, name);
    EXPECT_GT(total_params(describe(c)), 0) << name;
  }
}

TEST(Config, UnknownNameIsUsageError) {
  try {
    named_config("t5-gigantic");
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("t5-gigantic"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("t5-small"), std::string::npos);  // lists the known ones
  }
}

}  // namespace
}  // namespace dt::model
