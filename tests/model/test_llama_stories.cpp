// tests/model/test_llama_stories.cpp — the real stories260K llama2.c model and tok512.bin tokenizer
// against run.c's logic (scripts/make_llama_golden.py), and refusal of broken .bin files.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>

#include "model/llama.h"
#include "model/llama2c.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "model/tokenizer_bpe.h"
#include "test_llama_util.h"

namespace dt::model {
namespace {

using testing::expect_usage_error;
using testing::fixture;
using testing::scratch;
using testing::stories;

std::vector<int64_t> to_vec(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::unique_ptr<Backbone> load_stories() { return load_backbone(stories("stories260K.bin"), 0); }

TEST(Stories260K, LoadsWithTheHeaderConfig) {
  Llama2cModel m = read_llama2c(stories("stories260K.bin"));
  const ModelConfig& c = m.config;
  EXPECT_EQ(c.d_model, 64);
  EXPECT_EQ(c.d_ff, 172);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(m.tensors.size(), 1 + 5 * 9 + 1u);  // no lm_head: shared classifier
  int64_t n = 0;
  for (const auto& [name, t] : m.tensors) n += t.numel();
  EXPECT_EQ(n, total_params(describe(c)));
}

TEST(Stories260K, PromptLogitsMatchRunC) {
  auto model = load_stories();
  SafetensorsFile ref = SafetensorsFile::open(fixture("stories260K_expected.safetensors"));
  Batch batch;
  batch.input_ids = ref.tensor("prompt_ids").unsqueeze(0);
  at::Tensor logits = model->forward(batch).logits[0];
  const double err = testing::max_abs_diff(logits, ref.tensor("prompt_logits"));
  auto* llama = dynamic_cast<LlamaBackbone*>(model.get());
  ASSERT_NE(llama, nullptr);
  KvCache cache = llama->new_cache(1, 8);
  std::vector<at::Tensor> steps;
  for (int64_t t = 0; t < batch.input_ids.size(1); ++t)
    steps.push_back(llama->forward_step(batch.input_ids.narrow(1, t, 1), cache)[0]);
  const double step_err = testing::max_abs_diff(at::cat(steps, 0), ref.tensor("prompt_logits"));
  std::printf("stories260K vs run.c logic, max |err| of logits: full %.3g, kv steps %.3g (|logits| max %.3g)\n",
              err, step_err, logits.abs().max().item<double>());
  EXPECT_LT(err, 1e-4);
  EXPECT_LT(step_err, 1e-4);
}

TEST(Stories260K, GenerationEqualsRunCGreedyAndSeededSampling) {
  auto model = load_stories();
  auto& llama = dynamic_cast<LlamaBackbone&>(*model);
  SafetensorsFile ref = SafetensorsFile::open(fixture("stories260K_expected.safetensors"));
  GenerateOptions greedy;
  greedy.temperature = 0.0f;
  greedy.steps = 80;
  const auto from_bos = generate(llama, {1}, greedy);
  EXPECT_EQ(from_bos, to_vec(ref.tensor("greedy_bos")));
  EXPECT_EQ(generate(llama, {1}, greedy), from_bos);  // deterministic
  greedy.steps = 60;
  const auto prompt = to_vec(ref.tensor("prompt_ids"));
  EXPECT_EQ(generate(llama, prompt, greedy), to_vec(ref.tensor("greedy_prompt")));

  GenerateOptions topp;
  topp.temperature = 1.0f;
  topp.topp = 0.9f;
  topp.seed = 42;
  topp.steps = 60;
  EXPECT_EQ(generate(llama, {1}, topp), to_vec(ref.tensor("sample_t1_p09_seed42")));
  GenerateOptions mult;
  mult.temperature = 0.8f;
  mult.topp = 1.0f;
  mult.seed = 7;
  mult.steps = 40;
  EXPECT_EQ(generate(llama, {1}, mult), to_vec(ref.tensor("sample_t08_p1_seed7")));

  auto tok = Llama2cTokenizer::load(stories("tok512.bin"));
  std::printf("greedy from BOS: %s\n", tok->decode(from_bos).c_str());
}

TEST(Stories260K, RefusesBrokenBinFiles) {
  const std::string good = testing::read_bytes(stories("stories260K.bin"));
  std::string p = scratch("cut.bin");
  testing::write_bytes(p, good.substr(0, 100000));
  expect_usage_error([&] { load_backbone(p, 0); }, {p, "file is truncated", "100000 bytes", "1056540"});
  p = scratch("long.bin");
  testing::write_bytes(p, good + "xxxx");
  expect_usage_error([&] { load_backbone(p, 0); }, {p, "size mismatch", "1056544"});
  p = scratch("header.bin");
  std::string bad = good;
  bad[0] = '\xff';  // dim becomes negative
  bad[3] = '\xff';
  testing::write_bytes(p, bad);
  expect_usage_error([&] { load_backbone(p, 0); }, {p, "not a llama2.c checkpoint", "out of range"});
  p = scratch("heads.bin");
  bad = good;
  bad[12] = 7;  // n_heads 7 does not divide dim 64
  testing::write_bytes(p, bad);
  expect_usage_error([&] { load_backbone(p, 0); }, {p, "dim is not a multiple of n_heads"});
  p = scratch("tiny.bin");
  testing::write_bytes(p, good.substr(0, 20));
  expect_usage_error([&] { load_backbone(p, 0); }, {p, "truncated", "28-byte"});
}

TEST(Tok512, EncodesExactlyAsRunCAndRoundTrips) {
  auto tok = Llama2cTokenizer::load(stories("tok512.bin"));
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->pad_id(), 0);
  std::ifstream in(fixture("tokenizer_cases.json"));
  const auto cases = nlohmann::json::parse(in);
  ASSERT_GE(cases.size(), 5u);
  for (const auto& c : cases) {
    const std::string text = c["text"];
    EXPECT_EQ(tok->encode(text), c["ids"].get<std::vector<int64_t>>()) << text;
    EXPECT_EQ(tok->decode(tok->encode(text)), text);
  }
  // Byte fallback: an emoji absent from the vocabulary becomes its 4 UTF-8 bytes + 3.
  EXPECT_EQ(tok->piece(5, 0xF0 + 3), std::string(1, '\xF0'));
  // After BOS the dummy-prefix space is dropped; elsewhere kept.
  const int64_t once = tok->encode("Once").back();
  EXPECT_EQ(tok->piece(1, once), "Once");
  EXPECT_EQ(tok->piece(5, once), " Once");
  // The dispatcher's entry point returns the same tokenizer.
  EXPECT_EQ(load_llama2c_tokenizer(stories("tok512.bin"))->encode("Lily"), tok->encode("Lily"));
}

TEST(Tok512, RefusesBrokenFiles) {
  const std::string good = testing::read_bytes(stories("tok512.bin"));
  std::string p = scratch("cut_tok.bin");
  testing::write_bytes(p, good.substr(0, good.size() - 3));
  expect_usage_error([&] { Llama2cTokenizer::load(p); }, {p, "truncated in the bytes of token 511"});
  p = scratch("few_tok.bin");
  testing::write_bytes(p, good.substr(0, 200));
  expect_usage_error([&] { Llama2cTokenizer::load(p); }, {p, "not a llama2.c tokenizer"});
  p = scratch("bad_max.bin");
  testing::write_bytes(p, std::string("\xff\xff\xff\xff", 4) + good.substr(4));
  expect_usage_error([&] { Llama2cTokenizer::load(p); }, {p, "max_token_length -1"});
  expect_usage_error([&] { Llama2cTokenizer::load(scratch("nothing.bin")); }, {"cannot open"});
}

}  // namespace
}  // namespace dt::model

namespace dt::model {
namespace {

// A negative vocab_size means a separate classifier (wcls) follows freq_cis; with wcls equal to the
// embedding the model is the same, now with an untied lm_head.weight.
TEST(Stories260K, UnsharedClassifierVariantLoadsLmHead) {
  std::string bytes = testing::read_bytes(stories("stories260K.bin"));
  const int32_t neg = -512;
  std::memcpy(&bytes[20], &neg, 4);
  bytes += bytes.substr(28, 512 * 64 * 4);  // wcls = token_embedding
  const std::string path = scratch("unshared.bin");
  testing::write_bytes(path, bytes);
  auto untied = load_backbone(path, 0);
  EXPECT_FALSE(untied->config().tie_word_embeddings);
  EXPECT_EQ(untied->named_parameters().back().first, "lm_head.weight");
  auto tied = load_stories();
  Batch batch;
  batch.input_ids = at::tensor({1, 403, 407, 261}, at::kLong).view({1, 4});
  EXPECT_TRUE(at::equal(untied->forward(batch).logits, tied->forward(batch).logits));
}

}  // namespace
}  // namespace dt::model
