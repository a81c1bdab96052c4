// Table-driven method tests over tiny models of every architecture (HF PEFT's test_custom_models in
// spirit): what attach() creates equals what plan() predicts; identity at initialization where the
// paper's init gives it; gradients reach only the method's tensors; the backbone's weights stay
// bit-identical through optimizer steps; and every hook site the config lists is really consulted.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <boost/program_options.hpp>
#include <map>

#include "model/load.h"
#include "model/t5.h"
#include "peft/method.h"
#include "tests/peft/method_cases.h"
#include "tests/peft/test_adapters_util.h"

using namespace dt;

std::vector<dt::testing::MethodCase>& dt::testing::method_cases() {
  static std::vector<MethodCase> rows;
  return rows;
}

namespace {

using Case = dt::testing::MethodCase;

const std::vector<std::string> kTinyModels = {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "tiny-bert"};

// The methods of dist/'s issue; every later method adds its rows in its own test file.
const int kRegistered = [] {
  std::vector<Case> rows;
  for (const auto& model : kTinyModels) {
    rows.push_back({model, "full", {}, false});
    rows.push_back({model, "bitfit", {}, true});
    rows.push_back({model, "lora", {"--lora.targets", "q,k,v,o,wi,wo", "--lora.r", "2"}, true});
    rows.push_back({model, "lora+bitfit", {"--lora.r", "2"}, true});
  }
  return dt::testing::add_method_cases(rows);
}();

const std::vector<Case>& cases() { return dt::testing::method_cases(); }

// The MethodSet and tiny backbone helpers are shared with the per-method tests.
peft::MethodSet methods(const Case& c) {
  std::vector<std::string> argv = {"--method", c.method};
  argv.insert(argv.end(), c.args.begin(), c.args.end());
  return dt::testing::adapters::method_set(argv);
}

using dt::testing::adapters::tiny;

model::Batch batch_for(const model::ModelConfig& config) {
  torch::manual_seed(11);
  model::Batch b;
  b.input_ids = torch::randint(3, config.vocab_size, {3, 6}, torch::kLong);
  b.attention_mask = torch::ones({3, 6}, torch::kLong);
  b.attention_mask[2][5] = 0;  // one padded position
  b.labels = torch::tensor({0, 1, 1}, torch::kLong);
  return b;
}

std::map<std::string, at::Tensor> snapshot(const model::Backbone& backbone) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : backbone.named_parameters()) out[name] = t.detach().clone();
  return out;
}

std::string label(const Case& c) { return c.model + " / " + c.method; }

}  // namespace

TEST(PeftMethods, AttachMatchesPlan) {
  for (const auto& c : cases()) {
    auto backbone = tiny(c.model);
    const auto set = methods(c);
    const auto planned = set.plan(backbone->config(), 2);
    const auto attached = set.apply(*backbone);
    dt::testing::adapters::expect_attach_matches_plan(planned, attached, label(c));
  }
}

TEST(PeftMethods, IdentityAtInitialization) {
  for (const auto& c : cases()) {
    if (!c.identity_at_init) continue;
    auto bare = tiny(c.model);
    auto adapted = tiny(c.model);
    const auto batch = batch_for(bare->config());
    const auto set = methods(c);
    set.apply(*adapted);
    torch::NoGradGuard no_grad;
    bare->set_training(false);
    adapted->set_training(false);
    const auto want = bare->forward(batch).logits;
    const auto got = adapted->forward(batch).logits;
    EXPECT_TRUE(at::allclose(want, got, 1e-5, 1e-6)) << label(c) << " max diff "
                                                     << (want - got).abs().max().item<double>();
  }
}

TEST(PeftMethods, OnlyTrainablesChangeThroughOptimizerSteps) {
  for (const auto& c : cases()) {
    auto backbone = tiny(c.model);
    const auto set = methods(c);
    const auto trainables = set.apply(*backbone);
    std::map<std::string, bool> trains;
    for (const auto& t : trainables) trains[t.name] = true;
    const auto before = snapshot(*backbone);
    const auto batch = batch_for(backbone->config());
    backbone->set_training(true);
    std::vector<at::Tensor> params;
    for (const auto& t : trainables) params.push_back(t.tensor);
    torch::optim::SGD sgd(params, torch::optim::SGDOptions(0.5));
    for (int step = 0; step < 3; ++step) {
      sgd.zero_grad();
      backbone->forward(batch).loss.backward();
      sgd.step();
    }
    const auto after = snapshot(*backbone);
    bool some_trainable_changed = false;
    for (const auto& [name, t] : before) {
      const bool same = at::equal(t, after.at(name));
      if (!trains.count(name)) {
        EXPECT_TRUE(same) << label(c) << ": frozen " << name << " changed";
      } else {
        some_trainable_changed |= !same;
      }
    }
    for (const auto& t : trainables) {
      // An untied LM head is off the classification path of decoders: full fine-tuning lists it,
      // but no gradient can reach it.
      if (t.name == "lm_head.weight" && backbone->config().arch != model::Arch::T5) continue;
      EXPECT_TRUE(t.tensor.grad().defined()) << label(c) << ": no gradient reached " << t.name;
    }
    // Frozen backbone weights get no gradient at all (autograd never computes it).
    for (const auto& [name, t] : backbone->named_parameters()) {
      if (!trains.count(name)) {
        EXPECT_FALSE(t.grad().defined()) << label(c) << ": " << name;
      }
    }
    if (c.method == "full") {
      EXPECT_TRUE(some_trainable_changed) << label(c);
    }
  }
}

TEST(PeftMethods, EverySiteOfTheConfigIsConsulted) {
  for (const auto& name : kTinyModels) {
    auto backbone = tiny(name);
    const auto sites = model::describe_sites(backbone->config());
    std::map<std::string, int> calls;
    for (const auto& s : sites) {
      if (s.kind == model::SiteKind::Embedding) continue;  // an input hook, not an output hook
      backbone->hooks().add_output(s.name, [&calls, n = s.name](const at::Tensor& h, const at::Tensor&) {
        ++calls[n];
        return h;
      });
    }
    const auto batch = batch_for(backbone->config());
    torch::NoGradGuard no_grad;
    backbone->forward(batch);
    for (const auto& s : sites) {
      if (s.kind == model::SiteKind::Embedding) continue;
      // The LM head is not on the classification path of decoders and encoders (score/classifier).
      if (s.kind == model::SiteKind::Head && backbone->config().arch != model::Arch::T5) continue;
      EXPECT_GT(calls[s.name], 0) << name << ": site " << s.name << " was never consulted";
    }
    EXPECT_EQ(backbone->sites().size(), sites.size()) << name;
  }
}
