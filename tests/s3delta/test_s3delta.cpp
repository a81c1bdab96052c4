// tests/s3delta/test_s3delta.cpp — S3Delta (peft/s3delta, launch/search.h): the search space in closed form,
// gates that are exactly on/off, the shifted global sigmoid meeting its budget, the greedy fill meeting the
// budget exactly, the structure file and its refusals, retraining's plan == the structure's total, and a
// search on a tiny model where one position alone can lower the loss finds it (1 and 2 ranks: every rank
// ends with the same α's and the same structure).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>

#include "launch/search.h"
#include "model/load.h"
#include "peft/s3delta/s3delta.h"
#include "tests/mpi_test_util.h"
#include "tests/peft/test_adapters_util.h"
#include "util/error.h"

namespace dt::testing {
namespace {

namespace s3 = peft::s3delta;
using adapters::tiny;

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "s3delta_" + std::to_string(test_comm().rank()) + "_" + name;
}

// ---- the search space ------------------------------------------------------------------------------

TEST(S3DeltaSpace, LlamaInClosedForm) {
  const model::ModelConfig c = model::named_config("tiny-llama");  // d 16, d_ff 40, 2 layers, 4 heads, 2 kv heads
  const int64_t d = c.d_model, f = c.d_ff, q = c.num_heads * c.d_kv, kv = c.num_kv_heads * c.d_kv, L = c.num_layers;
  for (int64_t r : {1, 3}) {
    s3::SpaceOptions o;
    o.lora_r = r;
    o.bottleneck = 5;
    const auto space = s3::search_space(c, o);
    const int64_t lora = r * ((d + q) + 2 * (d + kv) + (q + d) + (d + f) + (f + d));
    const int64_t bitfit = q + 2 * kv + d + f + d + 2 * d;
    const int64_t adapter = 2 * (2 * d * 5 + 5 + d);
    const int64_t ln = 2 * d;
    int64_t total = 0;
    for (const auto& cand : space) total += cand.params();
    EXPECT_EQ(space.size(), static_cast<size_t>(18 * L + 2)) << "r " << r;
    EXPECT_EQ(total, L * (lora + bitfit + adapter + ln) + 2 * d) << "r " << r;
  }
  s3::SpaceOptions only_ln;
  only_ln.kinds = s3::parse_kinds("k", "ln");
  EXPECT_EQ(s3::search_space(c, only_ln).size(), static_cast<size_t>(2 * L + 1));
  EXPECT_EQ(s3::adapter_bottleneck(c, {}), 1);  // 16 / 32 floored, at least 1
  EXPECT_EQ(s3::adapter_bottleneck(model::named_config("t5-base"), {}), 24);
}

// t5-base (d 768, d_ff 3072, 12 + 12 layers, m = 768 / 32 = 24), counted by hand: an encoder layer has 2 norms
// (gain + bias each), q, k, v, o (LoRA + bias each), an adapter after the self-attention, wi (LoRA + bias) and
// the FFN output (LoRA on wo, a bias, an adapter): 18 candidates, 99,120 parameters; a decoder layer adds a
// third norm and the cross-attention's q, k, v, o (no adapter there): 28, 109,872; plus both final norms.
TEST(S3DeltaSpace, T5BaseInClosedForm) {
  const auto space = s3::search_space(model::named_config("t5-base"), {});
  int64_t total = 0;
  for (const auto& cand : space) total += cand.params();
  EXPECT_EQ(space.size(), 12u * 18 + 12 * 28 + 4);
  EXPECT_EQ(total, 12 * 99120 + 12 * 109872 + 4 * 768);
}

TEST(S3DeltaSpace, NamesAreUniqueOnEveryArchitecture) {
  for (const std::string name : {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "tiny-bert"}) {
    std::set<std::string> names, tensors;
    for (const auto& cand : s3::search_space(model::named_config(name), {})) {
      EXPECT_TRUE(names.insert(cand.name).second) << name << " " << cand.name;
      for (const auto& t : cand.tensors) EXPECT_TRUE(tensors.insert(t.name).second) << name << " " << t.name;
    }
    EXPECT_GT(names.size(), 10u) << name;
  }
}

TEST(S3DeltaSpace, BadKindsAreRefused) {
  EXPECT_THROW(s3::parse_kinds("s3delta.kinds", "lora,prefix"), UsageError);
  EXPECT_THROW(s3::parse_kinds("s3delta.kinds", "lora,lora"), UsageError);
}

// ---- gates -------------------------------------------------------------------------------------------

at::Tensor logits_of(model::Backbone& backbone) { return backbone.forward(adapters::batch_for(backbone.config())).logits; }

// Every module starts as the identity; with random values, z = 1 equals the ungated modules and z = 0 the
// bare backbone, on every architecture.
TEST(S3DeltaGates, OnIsTheModuleAndOffIsTheBackbone) {
  for (const std::string name : {"tiny-llama", "tiny-t5", "tiny-bert"}) {
    c10::NoGradGuard no_grad;
    auto bare = tiny(name);
    const at::Tensor reference = logits_of(*bare);
    auto gated = tiny(name);
    const auto space = s3::search_space(gated->config(), {});
    auto gates = std::make_shared<s3::Gates>();
    const auto trainables = s3::attach_candidates(*gated, space, {}, gates);
    gates->z = at::full({static_cast<int64_t>(space.size())}, 0.3);
    EXPECT_TRUE(at::allclose(logits_of(*gated), reference, 0, 1e-6)) << name << ": identity at init";
    adapters::randomize(trainables);
    gates->z = at::zeros({static_cast<int64_t>(space.size())});
    EXPECT_TRUE(at::allclose(logits_of(*gated), reference, 0, 1e-6)) << name << ": z = 0";
    gates->z = at::ones({static_cast<int64_t>(space.size())});
    const at::Tensor on = logits_of(*gated);
    EXPECT_GT((on - reference).abs().max().item<double>(), 1e-3) << name;

    auto plain = tiny(name);
    const auto plain_trainables = s3::attach_candidates(*plain, space, {}, nullptr);
    ASSERT_EQ(plain_trainables.size(), trainables.size());
    for (size_t i = 0; i < trainables.size(); ++i) plain_trainables[i].tensor.copy_(trainables[i].tensor);
    EXPECT_TRUE(at::allclose(logits_of(*plain), on, 1e-5, 1e-6)) << name << ": z = 1 vs ungated";
  }
}

TEST(S3DeltaGates, ShiftMeetsTheBudgetInExpectation) {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::vector<double> alphas(40);
  std::vector<int64_t> sizes(40);
  int64_t total = 0;
  for (size_t i = 0; i < alphas.size(); ++i) {
    alphas[i] = normal(rng);
    sizes[i] = 16 + static_cast<int64_t>(rng() % 500);
    total += sizes[i];
  }
  for (double beta : {0.5, 1.0, 3.0}) {
    for (int64_t budget : {int64_t{20}, total / 10, total / 2, total - 1}) {
      const double b = s3::solve_shift(alphas, sizes, budget, beta);
      double expected = 0;
      for (size_t i = 0; i < alphas.size(); ++i) expected += sizes[i] / (1.0 + std::exp(-(alphas[i] - b) / beta));
      EXPECT_NEAR(expected, budget * (1 - 1e-7), 1e-6 * budget) << "beta " << beta << " budget " << budget;
      // The torch side computes the same p.
      const at::Tensor a = at::tensor(alphas, at::kDouble).to(at::kFloat);
      const at::Tensor p = s3::gate_probabilities(a, b, beta).to(at::kDouble);
      const at::Tensor n = at::tensor(sizes, at::kLong).to(at::kDouble);
      EXPECT_NEAR((p * n).sum().item<double>(), budget, 1e-4 * budget + 1e-3);
    }
  }
  EXPECT_TRUE(std::isinf(s3::solve_shift(alphas, sizes, total, 1.0)));  // covers every module: p = 1
  const at::Tensor all = s3::gate_probabilities(at::zeros({40}), s3::solve_shift(alphas, sizes, total, 1.0), 1.0);
  EXPECT_GT(all.min().item<double>(), 0.999);
}

// shift_detach keeps the values and couples the gradients: raising one α lowers the others' share.
TEST(S3DeltaGates, ShiftDetachCouplesTheGradient) {
  at::Tensor a = at::tensor({0.5, -0.2, 0.1}, at::kFloat).requires_grad_(true);
  const at::Tensor plain = s3::gate_probabilities(a, 0.3, 1.0, /*shift_detach=*/false);
  const at::Tensor coupled = s3::gate_probabilities(a, 0.3, 1.0, /*shift_detach=*/true);
  EXPECT_TRUE(at::allclose(plain, coupled));
  coupled[0].backward();
  EXPECT_GT(a.grad()[0].item<double>(), 0);
  EXPECT_LT(a.grad()[1].item<double>(), 0);
  EXPECT_LT(a.grad()[2].item<double>(), 0);
  // The relaxed Bernoulli: u = 1 - p gives z = 1/2, u -> 1 gives z -> 1.
  const at::Tensor p = at::tensor({0.2f, 0.7f});
  EXPECT_TRUE(at::allclose(s3::relaxed_bernoulli(p, 1 - p), at::full({2}, 0.5), 1e-5, 1e-6));
  EXPECT_GT(s3::relaxed_bernoulli(p, at::full({2}, 0.999999)).min().item<double>(), 0.99);
}

// ---- choosing under the budget ------------------------------------------------------------------------

TEST(S3DeltaSelect, GreedyFillMeetsTheBudgetExactly) {
  const std::vector<int64_t> sizes = {5, 3, 4, 2};
  const std::vector<double> scores = {0.9, 0.8, 0.7, 0.1};
  auto s = s3::select_under_budget(sizes, scores, 8);
  EXPECT_EQ(s.chosen, (std::vector<size_t>{0, 1}));
  EXPECT_EQ(s.total, 8);
  s = s3::select_under_budget(sizes, scores, 7);  // 3 and 4 do not fit after 5; 2 does: the fill goes on
  EXPECT_EQ(s.chosen, (std::vector<size_t>{0, 3}));
  EXPECT_EQ(s.total, 7);
  EXPECT_NE(s3::budget_violation(sizes, {0}, 7).find("candidate 3"), std::string::npos);
  EXPECT_NE(s3::budget_violation(sizes, {0, 1, 2}, 11).find("over the budget"), std::string::npos);
  s = s3::select_under_budget(sizes, scores, 14);  // covers every module: all kept
  EXPECT_EQ(s.chosen.size(), 4u);
  EXPECT_EQ(s.total, 14);
  std::mt19937_64 rng(9);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> n(1 + rng() % 30);
    std::vector<double> p(n.size());
    for (size_t i = 0; i < n.size(); ++i) {
      n[i] = 1 + static_cast<int64_t>(rng() % 100);
      p[i] = static_cast<double>(rng() % 1000) / 1000.0;
    }
    const int64_t budget = static_cast<int64_t>(rng() % 1500);
    const auto sel = s3::select_under_budget(n, p, budget);
    EXPECT_EQ(s3::budget_violation(n, sel.chosen, budget), "") << "trial " << trial;
  }
}

// ---- the structure file and retraining ----------------------------------------------------------------

s3::Structure structure_for(const model::ModelConfig& config, const std::vector<size_t>& pick) {
  s3::Structure s;
  s.backbone_name = config.name;
  s.backbone_config = model::config_metadata(config);
  s.backbone_params = model::total_params(model::describe(config));
  s.space.bottleneck = s3::adapter_bottleneck(config, s.space);
  s.budget_params = 1000;
  const auto space = s3::search_space(config, s.space);
  for (size_t i = 0; i < space.size(); ++i) {
    const bool chosen = std::find(pick.begin(), pick.end(), i) != pick.end();
    s.candidates.push_back({space[i].name, s3::kind_name(space[i].kind), space[i].params(), 0.5, 0.0, chosen});
    if (chosen) s.modules.push_back(s.candidates.back());
  }
  return s;
}

peft::MethodSet retrain_set(const std::string& path) {
  return adapters::method_set({"--method", "s3delta", "--structure", path});
}

TEST(S3DeltaStructure, RoundTripAndRetrainPlanEqualsTheTotal) {
  const model::ModelConfig config = model::named_config("tiny-llama");
  const s3::Structure s = structure_for(config, {0, 3, 7, 16, 19, 37});
  const std::string path = temp_path("structure.json");
  s3::write_structure(s, path);
  const s3::Structure back = s3::read_structure(path);
  EXPECT_EQ(s3::structure_json(back), s3::structure_json(s));
  EXPECT_EQ(back.total_params(), s.total_params());

  const peft::MethodSet methods = retrain_set(path);
  const auto planned = methods.plan(config, 0);
  EXPECT_EQ(model::total_params(planned), s.total_params());
  auto backbone = tiny("tiny-llama");
  const auto attached = adapters::without_head(methods.apply(*backbone));
  adapters::expect_attach_matches_plan(planned, attached, "s3delta retrain");
  EXPECT_NE(methods.describe().find("modules=6"), std::string::npos) << methods.describe();
  // Retraining starts from scratch: the model is the backbone at step 0.
  c10::NoGradGuard no_grad;
  EXPECT_TRUE(at::allclose(logits_of(*backbone), logits_of(*tiny("tiny-llama")), 0, 1e-6));
  std::remove(path.c_str());
}

void expect_refused(const std::function<void()>& f, const std::string& path, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "not refused: " << what;
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(S3DeltaStructure, BadFilesAreRefusedNamingTheFile) {
  const model::ModelConfig config = model::named_config("tiny-llama");
  const std::string path = temp_path("bad.json");
  expect_refused([&] { s3::read_structure(path + ".missing"); }, path + ".missing", "cannot read");
  auto write = [&](const std::string& text) { std::ofstream(path, std::ios::trunc) << text; };
  write("{\"format\": 3");
  expect_refused([&] { s3::read_structure(path); }, path, "not a JSON object");
  std::string good = s3::structure_json(structure_for(config, {1, 2}));
  write(good.substr(0, good.find("\"total_params\"")) + "\"total_params\": 5, \"modules\": []}");
  expect_refused([&] { s3::read_structure(path); }, path, "total_params is 5, but its modules add up to 0");
  write(good.substr(0, good.find("\"total_params\"")) + "\"total_params\": 0}");
  expect_refused([&] { s3::read_structure(path); }, path, "malformed");
  s3::Structure s = structure_for(config, {1, 2});
  s.modules[0].name = "model.layers.9.self_attn.q_proj.lora";
  s3::write_structure(s, path);
  expect_refused([&] { retrain_set(path).plan(config, 0); }, path, "not a candidate position");
  s = structure_for(config, {1, 2});
  s.modules.push_back(s.modules[0]);
  s3::write_structure(s, path);
  expect_refused([&] { s3::read_structure(path); }, path, "listed twice");
  s3::write_structure(structure_for(config, {1, 2}), path);
  expect_refused([&] { retrain_set(path).plan(model::named_config("tiny-t5"), 0); }, path, "architecture llama vs t5");
  model::ModelConfig wider = config;
  wider.d_ff = 48;
  expect_refused([&] { retrain_set(path).plan(wider, 0); }, path, "intermediate_size 40 vs 48");
  // Without a structure the method says what to do.
  expect_refused([&] { adapters::method_set({"--method", "s3delta"}).plan(config, 0); }, "--structure FILE",
                 "deltatune search");
  std::remove(path.c_str());
}

// ---- the search ------------------------------------------------------------------------------------

// tiny-llama whose final norm has gain 0: its output, the only input of the classification head, is 0
// whatever the modules upstream do, so every candidate but the bias after that norm is ineffective, and
// every label is 1: that bias alone can lower the loss. The search must rank it first and choose it.
TEST(S3DeltaSearch, FindsTheOnlyUsefulPosition) {
  auto backbone = tiny("tiny-llama", 21);
  {
    c10::NoGradGuard no_grad;
    for (auto& [name, t] : backbone->named_parameters()) {
      if (name == "model.norm.weight") t.zero_();
      if (name == "score.weight") t.normal_(0.0, 1.0);
    }
  }
  s3::SearchOptions options;
  options.budget_params = 0;
  const auto space = s3::search_space(backbone->config(), {});
  int64_t space_params = 0;
  for (const auto& c : space) space_params += c.params();
  at::manual_seed(3);
  launch::StructureSearch search(*backbone, {}, space_params / 4, options, at::kCPU);
  const model::ModelConfig config = backbone->config();
  auto batches = [config](const std::vector<int64_t>& ids) {
    at::manual_seed(1000 + ids.front());
    model::Batch b;
    b.input_ids = at::randint(3, config.vocab_size, {static_cast<int64_t>(ids.size()), 6}, at::kLong);
    b.attention_mask = at::ones_like(b.input_ids);
    b.labels = at::ones({static_cast<int64_t>(ids.size())}, at::kLong);
    return b;
  };
  launch::SearchData data{batches, batches, 256, 256};
  launch::SearchLoopOptions loop;
  loop.steps = 30;
  loop.batch_size = 8;
  loop.lr = 1e-2;
  std::vector<launch::SearchStepStats> steps;
  launch::run_search_loop(search, data, loop, test_comm(), test_comm(),
                          [&](const launch::SearchStepStats& s) { steps.push_back(s); });
  ASSERT_EQ(steps.size(), 30u);
  // The gate of the useful bias is sampled (p about 1/4 at first), so single steps are noisy; on average the
  // loss falls from ln 2 (b = 0: logits 0) as the bias grows and its gate opens.
  EXPECT_NEAR(steps.front().loss, std::log(2.0), 1e-5);
  double late = 0;
  for (size_t i = 20; i < 30; ++i) late += steps[i].loss / 10;
  EXPECT_LT(late, 0.5);
  const int world = test_comm().size();
  // Both groups are all-reduced every step, and counted apart: α's and module weights + the 2 x 16 head.
  EXPECT_EQ(steps.back().alphas.bytes, 4 * space.size());
  EXPECT_EQ(steps.back().weights.bytes, 4 * static_cast<uint64_t>(space_params + 2 * 16));

  const std::vector<double> p = search.probabilities();
  size_t useful = space.size();
  for (size_t i = 0; i < space.size(); ++i) {
    if (space[i].name == "model.norm.ln.bitfit") useful = i;
  }
  ASSERT_LT(useful, space.size());
  const size_t best = std::max_element(p.begin(), p.end()) - p.begin();
  EXPECT_EQ(space[best].name, "model.norm.ln.bitfit") << "p " << p[best] << " vs the useful one's " << p[useful];
  // And by a wide margin (measured: 0.83 against 0.24 for every other module).
  std::vector<double> others = p;
  others.erase(others.begin() + static_cast<std::ptrdiff_t>(useful));
  EXPECT_GT(p[useful], 2 * *std::max_element(others.begin(), others.end()));
  const s3::Structure s = launch::chosen_structure(search, {}, config);
  EXPECT_EQ(s3::budget_violation(search.sizes(), [&] {
              std::vector<size_t> idx;
              for (size_t i = 0; i < s.candidates.size(); ++i)
                if (s.candidates[i].chosen) idx.push_back(i);
              return idx;
            }(), search.budget()), "");
  bool chosen = false;
  for (const auto& m : s.modules) chosen |= m.name == "model.norm.ln.bitfit";
  EXPECT_TRUE(chosen);

  // Every rank holds the same α's, bit for bit (identical averaged gradients, identical noise).
  at::Tensor mine = search.alphas().detach().clone();
  at::Tensor sum = mine.clone();
  test_comm().all_reduce(sum)->wait();
  EXPECT_TRUE(at::equal(sum, mine * static_cast<double>(world))) << "α differs across ranks";
}

}  // namespace
}  // namespace dt::testing
