// tests/dist/test_optim.cpp — AdamW and Adafactor against PyTorch 1.13 reference values
// (tests/fixtures/optim/optim_golden.json, written by scripts/make_optim_golden.py), state
// save/restore, the learning-rate schedules at chosen steps, and global-norm clipping.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>

#include "dist/optim.h"
#include "util/error.h"

namespace dt::dist {
namespace {

using json = nlohmann::json;

const json& golden() {
  static const json doc = [] {
    const char* src = std::getenv("DELTATUNE_SOURCE_DIR");
    std::ifstream in(std::string(src ? src : ".") + "/tests/fixtures/optim/optim_golden.json");
    EXPECT_TRUE(in.good()) << "optim_golden.json not found (DELTATUNE_SOURCE_DIR set?)";
    return in.good() ? json::parse(in) : json::object();
  }();
  return doc;
}

at::Tensor tensor_of(const json& j) {
  const auto data = j.at("data").get<std::vector<float>>();
  const auto shape = j.at("shape").get<std::vector<int64_t>>();
  return at::tensor(data, at::kFloat).reshape(shape).clone();
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

const std::vector<std::string> kNames = {"w", "b", "m"};

NamedTensors initial_params() {
  NamedTensors params;
  for (const auto& n : kNames) {
    at::Tensor p = tensor_of(golden()["init"][n]);
    p.set_requires_grad(true);
    params.emplace_back(n, p);
  }
  return params;
}

void set_grads(NamedTensors& params, size_t step) {
  for (auto& [n, p] : params) {
    const json& g = golden()["grads"][step][n];
    p.mutable_grad() = g.is_null() ? at::Tensor() : tensor_of(g);
  }
}

OptimizerOptions options_of(const json& c) {
  OptimizerOptions o;
  o.name = c["optimizer"].get<std::string>();
  const json& opt = c["options"];
  if (o.name == "adamw") {
    o.adamw.beta1 = opt.value("beta1", 0.9);
    o.adamw.beta2 = opt.value("beta2", 0.999);
    o.adamw.eps = opt.value("eps", 1e-8);
    o.adamw.weight_decay = opt.value("weight_decay", 0.0);
  } else {
    o.adafactor.beta1 = opt.value("beta1", 0.0);
    o.adafactor.weight_decay = opt.value("weight_decay", 0.0);
  }
  return o;
}

TEST(Optim, MatchesPyTorchReferenceStepByStep) {
  const json& doc = golden();
  ASSERT_EQ(doc["cases"].size(), 4u);
  const auto lrs = doc["lrs"].get<std::vector<double>>();
  // AdamW twice: the fused kernel (the default) and the op-by-op update it replaced.
  std::vector<std::pair<const json*, bool>> runs;
  for (const json& c : doc["cases"]) {
    runs.emplace_back(&c, true);
    if (c["optimizer"] == "adamw") runs.emplace_back(&c, false);
  }
  ASSERT_GT(runs.size(), doc["cases"].size());
  for (const auto& [case_doc, fused] : runs) {
    const json& c = *case_doc;
    SCOPED_TRACE(c["optimizer"].get<std::string>() + " " + c["options"].dump() +
                 (fused ? "" : " op by op"));
    NamedTensors params = initial_params();
    OptimizerOptions options = options_of(c);
    options.adamw.fused = fused;
    auto opt = make_optimizer(params, options);
    double worst = 0.0, moved = 0.0;
    for (size_t s = 0; s < lrs.size(); ++s) {
      set_grads(params, s);
      opt->step(lrs[s]);
      for (const auto& [n, p] : params) {
        const at::Tensor ref = tensor_of(c["after_step"][s][n]);
        const double d = max_abs_diff(p.detach(), ref);
        EXPECT_LE(d, 1e-6) << n << " after step " << s;
        worst = std::max(worst, d);
        moved = std::max(moved, max_abs_diff(ref, tensor_of(golden()["init"][n])));
      }
    }
    EXPECT_GT(moved, 1e-3);  // the reference really moved the parameters
    std::printf("%s%s %s: max |ours - torch| over 4 steps %.3g (largest parameter change %.3g)\n",
                c["optimizer"].get<std::string>().c_str(), fused ? "" : " (op by op)",
                c["options"].dump().c_str(), worst, moved);
    // State: every reference slot, under the same name, with the same values and step counts.
    std::map<std::string, at::Tensor> mine;
    for (const auto& [k, t] : opt->state()) mine[k] = t;
    size_t slots = 0;
    for (const auto& [k, v] : c["state"].items()) {
      ASSERT_TRUE(mine.count(k)) << "no state " << k;
      if (v.is_number()) {
        EXPECT_EQ(mine[k].item<int64_t>(), v.get<int64_t>()) << k;
      } else {
        EXPECT_LE(max_abs_diff(mine[k], tensor_of(v)), 1e-6) << k;
      }
      ++slots;
    }
    EXPECT_EQ(mine.size(), slots);  // and nothing more
    EXPECT_EQ(opt->step_count("b"), 3);  // b had no gradient at one of the four steps
    EXPECT_EQ(opt->step_count("w"), 4);
  }
}

TEST(Optim, RestoredStateContinuesIdentically) {
  const auto lrs = golden()["lrs"].get<std::vector<double>>();
  for (const char* name : {"adamw", "adafactor"}) {
    OptimizerOptions o;
    o.name = name;
    o.adafactor.beta1 = 0.9;
    NamedTensors a = initial_params();
    auto opt_a = make_optimizer(a, o);
    for (size_t s = 0; s < 2; ++s) {
      set_grads(a, s);
      opt_a->step(lrs[s]);
    }
    // A fresh optimizer over copies of the parameters, given the saved state.
    NamedTensors b;
    for (const auto& [n, p] : a) b.emplace_back(n, p.detach().clone().set_requires_grad(true));
    auto opt_b = make_optimizer(b, o);
    NamedTensors saved;
    for (const auto& [k, t] : opt_a->state()) saved.emplace_back(k, t.clone());
    opt_b->set_state(saved);
    for (size_t s = 2; s < 4; ++s) {
      set_grads(a, s);
      set_grads(b, s);
      opt_a->step(lrs[s]);
      opt_b->step(lrs[s]);
    }
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << name << " " << a[i].first;

    saved.emplace_back("q.exp_avg", at::zeros({1}));
    EXPECT_THROW(opt_b->set_state(saved), UsageError);
    saved.pop_back();
    saved.erase(saved.begin() + 1);  // w's first slot
    EXPECT_THROW(opt_b->set_state(saved), UsageError);
  }
}

TEST(Optim, ZeroGradKeepsTheGradientTensors) {
  NamedTensors params = initial_params();
  set_grads(params, 0);
  const void* storage = params[0].second.grad().data_ptr();
  AdamW opt(params);
  opt.zero_grad();
  EXPECT_EQ(params[0].second.grad().data_ptr(), storage);
  EXPECT_EQ(params[0].second.grad().abs().sum().item<float>(), 0.0f);
  // A step on zero gradients from zero state leaves AdamW parameters where they were.
  const at::Tensor before = params[0].second.detach().clone();
  opt.step(0.1);
  EXPECT_TRUE(at::equal(params[0].second, before));
}

// FISH's mask refresh moves entries of "fish.values": the state of entry p becomes the old entry
// carry[p] (0 where new), the step count stays.
TEST(Optim, PermuteStateMovesEntriesWithTheirParameter) {
  NamedTensors params = {{"v", at::zeros({4}).set_requires_grad(true)}};
  AdamW opt(params);
  params[0].second.mutable_grad() = at::tensor({1.0f, 2.0f, 3.0f, 4.0f});
  opt.step(0.1);
  NamedTensors before;
  for (const auto& [k, t] : opt.state()) before.emplace_back(k, t.clone());
  opt.permute_state("v", {2, -1, 0, -1});
  const NamedTensors after = opt.state();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    if (after[i].first == "v.step") {
      EXPECT_EQ(after[i].second.item<int64_t>(), 1);
      continue;
    }
    const at::Tensor& b = before[i].second;
    const at::Tensor want = at::stack({b[2], at::zeros({}), b[0], at::zeros({})});
    EXPECT_TRUE(at::equal(after[i].second, want)) << after[i].first;
    EXPECT_NE(b[2].item<float>(), 0.0f);
  }
  EXPECT_THROW(opt.permute_state("v", {0, 1}), Error);
  EXPECT_THROW(opt.permute_state("w", {0, 1, 2, 3}), Error);
}

TEST(Optim, UnknownNamesAreUsageErrors) {
  OptimizerOptions o;
  o.name = "sgd";
  EXPECT_THROW(make_optimizer(initial_params(), o), UsageError);
  EXPECT_THROW(parse_lr_schedule("step"), UsageError);
  NamedTensors twice = {{"w", at::zeros({2})}, {"w", at::zeros({2})}};
  EXPECT_THROW(AdamW{twice}, Error);
}

TEST(LrSchedule, ValuesAtChosenSteps) {
  LrSchedule s{LrScheduleKind::Linear, 1e-3, 10, 110};
  EXPECT_DOUBLE_EQ(s.lr(0), 0.0);      // HF: the first step of a warmup runs at 0
  EXPECT_DOUBLE_EQ(s.lr(5), 0.5e-3);
  EXPECT_DOUBLE_EQ(s.lr(10), 1e-3);    // warmup done
  EXPECT_DOUBLE_EQ(s.lr(60), 0.5e-3);  // halfway down
  EXPECT_DOUBLE_EQ(s.lr(110), 0.0);
  EXPECT_DOUBLE_EQ(s.lr(200), 0.0);    // never negative
  s.kind = LrScheduleKind::Cosine;
  EXPECT_DOUBLE_EQ(s.lr(5), 0.5e-3);
  EXPECT_DOUBLE_EQ(s.lr(10), 1e-3);
  EXPECT_NEAR(s.lr(60), 0.5e-3, 1e-18);
  EXPECT_NEAR(s.lr(35), 1e-3 * 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-18);  // 0.853553...e-3
  EXPECT_NEAR(s.lr(110), 0.0, 1e-18);
  s.kind = LrScheduleKind::Constant;
  EXPECT_DOUBLE_EQ(s.lr(5), 0.5e-3);
  EXPECT_DOUBLE_EQ(s.lr(1000), 1e-3);
  LrSchedule no_warmup{LrScheduleKind::Linear, 2e-4, 0, 4};
  EXPECT_DOUBLE_EQ(no_warmup.lr(0), 2e-4);
  EXPECT_DOUBLE_EQ(no_warmup.lr(1), 1.5e-4);
  EXPECT_DOUBLE_EQ(no_warmup.lr(3), 0.5e-4);
  EXPECT_EQ(parse_lr_schedule("cosine"), LrScheduleKind::Cosine);
}

TEST(ClipGradNorm, MatchesTorchClipGradNorm) {
  for (const json& c : golden()["clip"]) {
    NamedTensors params = initial_params();
    for (auto& [n, p] : params)
      p.mutable_grad() = tensor_of(golden()["grads"][0][n]) * c["scale_in"].get<double>();
    const double norm = clip_grad_norm(params, c["max_norm"].get<double>());
    EXPECT_NEAR(norm, c["total_norm"].get<double>(), 1e-5);
    for (const auto& [n, p] : params)
      EXPECT_LE(max_abs_diff(p.grad(), tensor_of(c["clipped"][n])), 1e-6) << n;
  }
}

TEST(ClipGradNorm, MeasuresOnlyAndSkipsMissingGradients) {
  NamedTensors params = {{"a", at::zeros({2}).set_requires_grad(true)},
                         {"b", at::zeros({3}).set_requires_grad(true)},
                         {"c", at::zeros({1}).set_requires_grad(true)}};
  params[0].second.mutable_grad() = at::tensor(std::vector<float>{3, 0});
  params[1].second.mutable_grad() = at::tensor(std::vector<float>{0, 4, 0});
  EXPECT_DOUBLE_EQ(clip_grad_norm(params, 0.0), 5.0);  // 3-4-5, not clipped
  EXPECT_FLOAT_EQ(params[1].second.grad()[1].item<float>(), 4.0f);
  EXPECT_NEAR(clip_grad_norm(params, 1.0), 5.0, 1e-12);
  EXPECT_NEAR(params[0].second.grad()[0].item<float>(), 3.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(clip_grad_norm(params, 0.0), 1.0, 1e-6);
}

}  // namespace
}  // namespace dt::dist
