// Compacter: table rows for the generic method checks, closed-form counts (the shared A_i counted
// once), the hook against an explicit sum of Kronecker products, the sharing of A across every
// adapter, and the divisibility errors.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "peft/adapter/adapter.h"
#include "tests/peft/method_cases.h"
#include "tests/peft/test_adapters_util.h"
#include "util/error.h"

using namespace dt;
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
    rows.push_back({model, "compacter", {"--compacter.n", "4", "--compacter.bottleneck", "8"}, true});
    rows.push_back({model, "compacter",
                    {"--compacter.n", "2", "--compacter.bottleneck", "4", "--compacter.activation", "gelu"}, true});
  }
  return dt::testing::add_method_cases(rows);
}();

// Σ_i A_i ⊗ (s_i t_iᵀ), with torch's kron.
at::Tensor phm_weight(const at::Tensor& rule, const at::Tensor& s, const at::Tensor& t) {
  at::Tensor w;
  for (int64_t i = 0; i < rule.size(0); ++i) {
    const at::Tensor term = at::kron(rule[i], at::outer(s[i], t[i]));
    w = w.defined() ? w + term : term;
  }
  return w;
}

}  // namespace

TEST(Compacter, PlanCountsTheSharedFactorsOnce) {
  const auto c = model::named_config("t5-base");
  const int64_t d = c.d_model, L = c.num_layers, Ld = c.num_decoder_layers;
  // n³ shared values, then per adapter (Houlsby placement: 2 per encoder and per decoder layer) two
  // PHM layers of n · (m/n + d/n) = m + d factor values each, plus biases m and d: 3 · (m + d).
  auto compacter = [&](int64_t n, int64_t m, int64_t adapters, int64_t width) {
    return n * n * n + adapters * 3 * (m + width);
  };
  EXPECT_EQ(planned("t5-base", {"--method", "compacter"}), compacter(4, 48, 2 * (L + Ld), d));
  EXPECT_EQ(planned("t5-base", {"--method", "compacter"}), 117568);
  EXPECT_EQ(planned("t5-base", {"--method", "compacter", "--compacter.n", "8", "--compacter.bottleneck", "24"}),
            compacter(8, 24, 48, d));
  const auto s = model::named_config("stories260K");
  EXPECT_EQ(planned("stories260K", {"--method", "compacter"}), compacter(4, 48, 2 * s.num_layers, s.d_model));
  EXPECT_EQ(planned("stories260K", {"--method", "compacter"}), 3424);
  int rules = 0;
  for (const auto& m : method_set({"--method", "compacter"}).plan(c, 0)) rules += m.name == "compacter.phm_rule";
  EXPECT_EQ(rules, 1);
}

TEST(Compacter, HookIsAResidualBottleneckOfKroneckerSums) {
  auto backbone = tiny("tiny-t5-v1_1");
  const auto trainables = without_head(method_set({"--method", "compacter", "--compacter.n", "2", "--compacter.bottleneck", "6"}).apply(*backbone));
  randomize(trainables);
  const auto t = by_name(trainables);
  const at::Tensor rule = t.at("compacter.phm_rule");
  const auto sites = peft::adapter::houlsby_sites(backbone->config());
  ASSERT_EQ(trainables.size(), 1 + 6 * sites.size());
  c10::NoGradGuard no_grad;
  for (const auto& site : sites) {
    const std::string p = site.name + ".compacter";
    const at::Tensor down = phm_weight(rule, t.at(p + ".down.s"), t.at(p + ".down.t"));
    const at::Tensor up = phm_weight(rule, t.at(p + ".up.s"), t.at(p + ".up.t"));
    ASSERT_EQ(down.sizes().vec(), (std::vector<int64_t>{6, 16}));
    ASSERT_EQ(up.sizes().vec(), (std::vector<int64_t>{16, 6}));
    const at::Tensor h = at::randn({2, 3, 16});
    const at::Tensor z = at::relu(at::matmul(h, down.t()) + t.at(p + ".down.bias"));
    const at::Tensor want = h + at::matmul(z, up.t()) + t.at(p + ".up.bias");
    EXPECT_TRUE(at::allclose(backbone->hooks().output(site.name, h, h), want, 1e-5, 1e-5)) << site.name;
  }
}

TEST(Compacter, EveryAdapterSharesTheSlowWeights) {
  auto backbone = tiny("tiny-bert");
  const auto trainables = without_head(method_set({"--method", "compacter", "--compacter.bottleneck", "8"}).apply(*backbone));
  randomize(trainables);
  const auto sites = peft::adapter::houlsby_sites(backbone->config());
  c10::NoGradGuard no_grad;
  const at::Tensor h = at::randn({2, 3, 16});
  for (const auto& s : sites) ASSERT_FALSE(at::allclose(backbone->hooks().output(s.name, h, h), h));
  // With the biases and the one shared rule zeroed, every adapter's weights vanish at once.
  for (const auto& t : trainables) {
    if (t.name == "compacter.phm_rule" || t.name.find(".bias") != std::string::npos) t.tensor.zero_();
  }
  for (const auto& s : sites) EXPECT_TRUE(at::equal(backbone->hooks().output(s.name, h, h), h)) << s.name;
}

TEST(Compacter, SizesNotDivisibleByNAreUsageErrors) {
  // The bottleneck is checked when the options are read, the hidden size when the model is known.
  EXPECT_THROW(method_set({"--method", "compacter", "--compacter.n", "4", "--compacter.bottleneck", "6"}), UsageError);
  EXPECT_THROW(method_set({"--method", "compacter", "--compacter.n", "0"}), UsageError);
  const auto set = method_set({"--method", "compacter", "--compacter.n", "3", "--compacter.bottleneck", "6"});
  EXPECT_THROW(set.plan(model::named_config("tiny-llama"), 0), UsageError);  // d_model 16
  auto backbone = tiny("tiny-llama");
  EXPECT_THROW(set.apply(*backbone), UsageError);
  EXPECT_NO_THROW(set.plan(model::named_config("t5-base"), 0));  // 768 = 3 · 256
}
