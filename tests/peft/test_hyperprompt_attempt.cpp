// HyperPrompt and ATTEMPT: table rows for the generic method checks; closed-form trainable counts
// (t5-base, and attach == plan on tiny models for 1 and 3 tasks); each hook against the paper's formula
// computed by hand from the method's own tensors; task conditioning (a task's own tensors decide its
// output and get no gradient from another task's batch); ATTEMPT's reduction to prompt tuning; and
// ATTEMPT's refusals of bad source checkpoints.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>

#include "dist/checkpoint.h"
#include "peft/adapter/adapter.h"
#include "tests/peft/method_cases.h"
#include "tests/peft/test_adapters_util.h"
#include "util/error.h"

using namespace dt;
using dt::testing::adapters::batch_for;
using dt::testing::adapters::by_name;
using dt::testing::adapters::method_set;
using dt::testing::adapters::method_set_for_tasks;
using dt::testing::adapters::planned;
using dt::testing::adapters::randomize;
using dt::testing::adapters::tiny;
using dt::testing::adapters::without_head;

namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kModels = {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "tiny-bert"};
// Small, pairwise different sizes, so a swapped dimension cannot pass.
const std::vector<std::string> kHyper = {"--hyperprompt.length", "3", "--hyperprompt.bottleneck", "4",
                                         "--hyperprompt.task-dim", "5", "--hyperprompt.hidden", "6",
                                         "--hyperprompt.projected-dim", "7"};
const std::vector<std::string> kAttempt = {"--attempt.length", "4", "--attempt.projection", "3"};

const int kRows = [] {
  std::vector<dt::testing::MethodCase> rows;
  for (const auto& model : kModels) {
    rows.push_back({model, "hyperprompt", kHyper, false});
    rows.push_back({model, "attempt", kAttempt, false});
  }
  return dt::testing::add_method_cases(rows);
}();

std::vector<std::string> with(const std::string& method, std::vector<std::string> args) {
  args.insert(args.begin(), {"--method", method});
  return args;
}

std::vector<std::string> tasks_of(int n) {
  const std::vector<std::string> names = {"rte", "mrpc", "sst2", "cola", "qnli", "qqp", "mnli", "stsb"};
  return {names.begin(), names.begin() + n};
}

// ---- closed forms -----------------------------------------------------------------------------------

// Self-attentions (T5: encoder and decoder, no cross-attention) and their key width (GQA: kv heads).
int64_t self_attentions(const model::ModelConfig& c) {
  return c.arch == model::Arch::T5 ? c.num_layers + c.num_decoder_layers : c.num_layers;
}
int64_t key_width(const model::ModelConfig& c) {
  return (c.arch == model::Arch::Llama ? c.num_kv_heads : c.num_heads) * c.d_kv;
}

// HyperPrompt-Global: task embeddings T·t', layer embeddings M·t', the projector [2t' -> h -> t] with
// biases, T global prompts l·d, and per key/value the generators of D [b·d] and U [kv·b] from t, with biases.
int64_t hyperprompt_count(const model::ModelConfig& c, int64_t T, int64_t l, int64_t b, int64_t e, int64_t h,
                          int64_t t) {
  const int64_t d = c.d_model, kv = key_width(c), M = self_attentions(c);
  return T * e + M * e + (h * 2 * e + h + t * h + t) + T * l * d + 2 * (b * d * t + b * d + kv * b * t + kv * b);
}

// ATTEMPT: T target prompts l·d, W_down [r, d], W_up [d, r] (no biases), the layer norm 2·d.
int64_t attempt_count(const model::ModelConfig& c, int64_t T, int64_t l, int64_t r) {
  return T * l * c.d_model + 2 * r * c.d_model + 2 * c.d_model;
}

int64_t planned_for_tasks(const std::string& model, const std::vector<std::string>& args, int tasks) {
  return model::total_params(method_set_for_tasks(args, tasks_of(tasks)).plan(model::named_config(model), 0));
}

// ---- helpers ----------------------------------------------------------------------------------------

std::string temp_dir(const std::string& tag) {
  std::string pattern = (fs::temp_directory_path() / ("dt-attempt-" + tag + "-XXXXXX")).string();
  const char* made = mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  return pattern;
}

// A deltatune checkpoint (as `deltatune train --method prompt` writes one) holding `trainables`.
std::string write_prompt_checkpoint(const std::string& dir, const dist::NamedTensors& trainables) {
  dist::CheckpointState s;
  s.step = 100;
  s.world_size = 1;
  s.optimizer = "adamw";
  s.method = "prompt(length=4)";
  s.trainables = trainables;
  s.rng_states = {std::vector<uint8_t>(16, 1)};
  return dist::write_checkpoint(dir, s, 0);
}

at::Tensor logits_of(model::Backbone& backbone, int64_t task) {
  c10::NoGradGuard no_grad;
  backbone.set_training(false);
  model::Batch batch = batch_for(backbone.config());
  batch.task = task;
  return backbone.forward(batch).logits;
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// Whether a tensor received no gradient from the last backward (undefined, or all zero).
bool no_gradient(const at::Tensor& t) { return !t.grad().defined() || t.grad().abs().max().item<double>() == 0.0; }

std::string thrown_usage_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not a UsageError: ") + e.what();
  }
  return "nothing thrown";
}

}  // namespace

// ---- plan --------------------------------------------------------------------------------------------

TEST(Hyperprompt, PlanOnT5Base) {
  const auto c = model::named_config("t5-base");
  ASSERT_EQ(self_attentions(c), 24);
  ASSERT_EQ(key_width(c), 768);
  // Defaults l = 16, b = 16, t' = 64, h = 128, t = 64: the generators dominate,
  // 2 · (16·768·64 + 16·768 + 768·16·64 + 768·16) = 3,194,880; each task adds 64 + 16·768 = 12,352.
  EXPECT_EQ(hyperprompt_count(c, 1, 16, 16, 64, 128, 64), 3233536);
  EXPECT_EQ(planned_for_tasks("t5-base", {"--method", "hyperprompt"}, 1), 3233536);
  EXPECT_EQ(planned_for_tasks("t5-base", {"--method", "hyperprompt"}, 3), 3233536 + 2 * 12352);
  EXPECT_EQ(planned_for_tasks("t5-base", with("hyperprompt", kHyper), 3), hyperprompt_count(c, 3, 3, 4, 5, 6, 7));
  // The header's figure: 8 GLUE tasks on T5 v1.1-XXL add 17,592,000 parameters, 0.158% of the backbone.
  const auto xxl = model::named_config("t5-v1_1-xxl");
  const int64_t added = planned_for_tasks("t5-v1_1-xxl", {"--method", "hyperprompt"}, 8);
  EXPECT_EQ(added, hyperprompt_count(xxl, 8, 16, 16, 64, 128, 64));
  EXPECT_EQ(added, 17592000);
  const double share = static_cast<double>(added) / static_cast<double>(model::total_params(model::describe(xxl)));
  EXPECT_NEAR(share, 0.00158, 0.00001);
  // Llama with GQA: the generated up projection writes the kv heads only (stories260K: 4 of 8 heads).
  const auto s = model::named_config("stories260K");
  ASSERT_EQ(key_width(s), 32);
  EXPECT_EQ(planned_for_tasks("stories260K", {"--method", "hyperprompt"}, 3),
            hyperprompt_count(s, 3, 16, 16, 64, 128, 64));
}

TEST(Attempt, PlanOnT5Base) {
  const auto c = model::named_config("t5-base");
  // Defaults l = 100, r = 100: 100·768 per task + 2·100·768 + 2·768.
  EXPECT_EQ(attempt_count(c, 1, 100, 100), 231936);
  EXPECT_EQ(planned_for_tasks("t5-base", {"--method", "attempt"}, 1), 231936);
  EXPECT_EQ(planned_for_tasks("t5-base", {"--method", "attempt"}, 3), 231936 + 2 * 76800);
  // Sources are frozen: they never count (and plan does not read them).
  EXPECT_EQ(planned("t5-base", {"--method", "attempt", "--attempt.length", "10"}), attempt_count(c, 1, 10, 100));
}

TEST(HyperpromptAttempt, AttachMatchesPlanForOneAndThreeTasks) {
  for (const auto& model : kModels) {
    for (const int tasks : {1, 3}) {
      for (const auto& [method, args] : {std::make_pair(std::string("hyperprompt"), kHyper),
                                         std::make_pair(std::string("attempt"), kAttempt)}) {
        const std::string label = model + " / " + method + " / " + std::to_string(tasks) + " tasks";
        auto backbone = tiny(model);
        const auto set = method_set_for_tasks(with(method, args), tasks_of(tasks));
        const auto metas = set.plan(backbone->config(), 0);
        const auto attached = without_head(set.apply(*backbone));
        dt::testing::adapters::expect_attach_matches_plan(metas, attached, label);
        int64_t numel = 0;
        for (const auto& t : attached) numel += t.tensor.numel();
        const auto& c = backbone->config();
        EXPECT_EQ(numel, method == "hyperprompt" ? hyperprompt_count(c, tasks, 3, 4, 5, 6, 7)
                                                 : attempt_count(c, tasks, 4, 3))
            << label;
        // Per-task tensors carry the task's name.
        const std::string last = tasks_of(tasks).back();
        EXPECT_EQ(by_name(attached).count(method == "hyperprompt" ? "hyperprompt.global_prompt." + last
                                                                  : "attempt.target_prompt." + last),
                  1u)
            << label;
      }
    }
  }
}

// ---- the hooks against the papers' formulas ----------------------------------------------------------

TEST(Hyperprompt, PrefixIsTheGeneratedLocalHypernetworkOfTheTasksGlobalPrompt) {
  for (const std::string model : {"tiny-llama", "tiny-t5"}) {
    auto backbone = tiny(model);
    const auto trainables =
        without_head(method_set_for_tasks(with("hyperprompt", kHyper), tasks_of(3)).apply(*backbone));
    randomize(trainables);
    const auto t = by_name(trainables);
    const auto& c = backbone->config();
    const int64_t d = c.d_model, kv = key_width(c), l = 3, b = 4, H = kv / c.d_kv, D = c.d_kv;
    // The self-attentions in forward order (layer embedding rows); T5's cross-attentions get nothing.
    std::vector<std::string> attentions;
    for (const auto& g : peft::adapter::prefix_groups(c)) {
      for (const auto& a : g.attentions) {
        if (g.name == "cross") {
          EXPECT_FALSE(backbone->hooks().has_prefix(a)) << a;
        } else {
          attentions.push_back(a);
        }
      }
    }
    ASSERT_EQ(static_cast<int64_t>(attentions.size()), self_attentions(c));
    c10::NoGradGuard no_grad;
    for (int64_t task = 0; task < 3; ++task) {
      backbone->hooks().set_task(task);
      for (size_t m = 0; m < attentions.size(); ++m) {
        // I = W2 relu(W1 [k_τ ; z_m] + c1) + c2; D, U generated from I; P_K = U relu(D P_τ).
        const at::Tensor z = at::cat({t.at("hyperprompt.task_embedding.weight")[task],
                                      t.at("hyperprompt.layer_embedding.weight")[static_cast<int64_t>(m)]});
        const at::Tensor hidden = at::relu(at::matmul(t.at("hyperprompt.task_projector.0.weight"), z) +
                                           t.at("hyperprompt.task_projector.0.bias"));
        const at::Tensor I = at::matmul(t.at("hyperprompt.task_projector.2.weight"), hidden) +
                             t.at("hyperprompt.task_projector.2.bias");
        const at::Tensor P = t.at("hyperprompt.global_prompt." + tasks_of(3)[task]);
        auto expected = [&](const std::string& kind) {
          const std::string g = "hyperprompt." + kind + "_hypernet.";
          const at::Tensor down = (at::matmul(t.at(g + "down_generator.weight"), I) + t.at(g + "down_generator.bias"))
                                      .view({b, d});
          const at::Tensor up = (at::matmul(t.at(g + "up_generator.weight"), I) + t.at(g + "up_generator.bias"))
                                    .view({kv, b});
          const at::Tensor p = at::matmul(at::relu(at::matmul(P, down.t())), up.t());  // [l, kv]
          return p.view({l, H, D}).permute({1, 0, 2});                                  // [H, l, D]
        };
        const auto [keys, values] = backbone->hooks().prefix(attentions[m], 2);
        ASSERT_EQ(keys.sizes(), at::IntArrayRef({2, H, l, D})) << attentions[m];
        for (int64_t i = 0; i < 2; ++i) {
          EXPECT_TRUE(at::allclose(keys[i], expected("key"), 1e-4, 1e-5)) << model << " " << attentions[m];
          EXPECT_TRUE(at::allclose(values[i], expected("value"), 1e-4, 1e-5)) << model << " " << attentions[m];
        }
      }
    }
    // A task outside the run's list is an error, not another task's prompt.
    backbone->hooks().set_task(3);
    try {
      backbone->hooks().prefix(attentions[0], 1);
      ADD_FAILURE() << "task 3 of 3 was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("batch of task 3 in a run of 3 tasks"), std::string::npos) << e.what();
    }
  }
}

TEST(Attempt, InputHookPrependsTheAttentionMixtureOfSourcesAndTarget) {
  const std::string dir = temp_dir("mix");
  at::manual_seed(5);
  const int64_t d = model::named_config("tiny-t5").d_model, l = 4;
  std::vector<at::Tensor> sources = {at::randn({l, d}), at::randn({l, d})};
  std::vector<std::string> paths;
  for (size_t j = 0; j < sources.size(); ++j) {
    paths.push_back(write_prompt_checkpoint(dir + "/s" + std::to_string(j), {{"prompt.embedding", sources[j]}}));
  }
  auto backbone = tiny("tiny-t5");
  const auto trainables = without_head(
      method_set_for_tasks(with("attempt", {"--attempt.length", "4", "--attempt.projection", "3",
                                            "--attempt.temperature", "2.5", "--attempt.sources",
                                            paths[0] + "," + paths[1]}),
                           tasks_of(2))
          .apply(*backbone));
  ASSERT_EQ(trainables.size(), 2u + 4u);  // the sources are not trainable
  const auto t = by_name(trainables);
  // Every target starts as the first source (the reference code's initialization).
  EXPECT_TRUE(at::equal(t.at("attempt.target_prompt.rte"), sources[0]));
  EXPECT_TRUE(at::equal(t.at("attempt.target_prompt.mrpc"), sources[0]));
  randomize(trainables);
  c10::NoGradGuard no_grad;
  const at::Tensor embedded = at::randn({3, 5, d});
  for (int64_t task = 0; task < 2; ++task) {
    backbone->hooks().set_task(task);
    const at::Tensor target = t.at("attempt.target_prompt." + tasks_of(2)[task]);
    // x̂ = max_T X; h = LayerNorm(W_up silu(W_down x̂)); a = softmax(h · max_l P_j / 2.5); P = P_τ + Σ a_j P_j.
    const at::Tensor x = std::get<0>(embedded.max(1));
    const at::Tensor h = at::layer_norm(at::matmul(at::silu(at::matmul(x, t.at("attempt.attn_W_down.weight").t())),
                                                   t.at("attempt.attn_W_up.weight").t()),
                                        {d}, t.at("attempt.layer_norm.weight"), t.at("attempt.layer_norm.bias"), 1e-5);
    const std::vector<at::Tensor> prompts = {sources[0], sources[1], target};
    std::vector<at::Tensor> scores;
    for (const auto& p : prompts) scores.push_back(at::matmul(h, std::get<0>(p.max(0))) / 2.5);
    const at::Tensor a = at::softmax(at::stack(scores, 1), 1);  // [B, 3]
    at::Tensor instance = target.unsqueeze(0).repeat({3, 1, 1});
    for (size_t j = 0; j < prompts.size(); ++j) {
      instance = instance + a.select(1, static_cast<int64_t>(j)).view({3, 1, 1}) * prompts[j];
    }
    const at::Tensor got = backbone->hooks().input("shared", embedded);
    ASSERT_EQ(got.sizes(), at::IntArrayRef({3, l + 5, d}));
    EXPECT_TRUE(at::equal(got.slice(1, l), embedded));
    EXPECT_TRUE(at::allclose(got.slice(1, 0, l), instance, 1e-4, 1e-5))
        << "task " << task << " max diff " << max_diff(got.slice(1, 0, l), instance);
    // The weights are a real mixture here (no prompt dominates), so the test sees every term.
    EXPECT_LT(a.max().item<double>(), 0.999);
  }
  fs::remove_all(dir);
}

// ---- task conditioning -------------------------------------------------------------------------------

TEST(Hyperprompt, TheTaskEmbeddingAloneChangesTheOutput) {
  for (const std::string model : {"tiny-llama", "tiny-t5", "tiny-bert"}) {
    auto backbone = tiny(model);
    const auto trainables =
        without_head(method_set_for_tasks(with("hyperprompt", kHyper), tasks_of(2)).apply(*backbone));
    // At initialization the generators' weights are small (N(0, 1e-2²)), so the task embedding moves
    // the prompts only slightly; trained-sized weights make its effect visible on every backbone.
    randomize(trainables);
    const auto t = by_name(trainables);
    at::Tensor task_embedding = t.at("hyperprompt.task_embedding.weight");
    {
      // Task 1 = task 0 in everything it owns: the same output, bit for bit.
      c10::NoGradGuard no_grad;
      t.at("hyperprompt.global_prompt.mrpc").copy_(t.at("hyperprompt.global_prompt.rte"));
      task_embedding[1].copy_(task_embedding[0]);
    }
    EXPECT_TRUE(at::equal(logits_of(*backbone, 0), logits_of(*backbone, 1))) << model;
    {
      // Only the task embedding differs now.
      c10::NoGradGuard no_grad;
      task_embedding[1].add_(at::randn({task_embedding.size(1)}));
    }
    EXPECT_GT(max_diff(logits_of(*backbone, 0), logits_of(*backbone, 1)), 1e-4) << model;
  }
}

TEST(Attempt, TheTargetPromptAloneChangesTheOutput) {
  for (const std::string model : {"tiny-llama", "tiny-t5", "tiny-bert"}) {
    auto backbone = tiny(model);
    const auto t = by_name(without_head(method_set_for_tasks(with("attempt", kAttempt), tasks_of(2)).apply(*backbone)));
    {
      c10::NoGradGuard no_grad;
      t.at("attempt.target_prompt.mrpc").copy_(t.at("attempt.target_prompt.rte"));
    }
    EXPECT_TRUE(at::equal(logits_of(*backbone, 0), logits_of(*backbone, 1))) << model;
    {
      c10::NoGradGuard no_grad;
      t.at("attempt.target_prompt.mrpc").add_(at::randn(t.at("attempt.target_prompt.mrpc").sizes()));
    }
    EXPECT_GT(max_diff(logits_of(*backbone, 0), logits_of(*backbone, 1)), 1e-4) << model;
  }
}

TEST(HyperpromptAttempt, ABatchTrainsOnlyItsOwnTasksTensors) {
  for (const std::string model : {"tiny-llama", "tiny-t5", "tiny-bert"}) {
    for (const std::string method : {"hyperprompt", "attempt"}) {
      auto backbone = tiny(model);
      const auto trainables =
          without_head(method_set_for_tasks(with(method, method == "hyperprompt" ? kHyper : kAttempt), tasks_of(3))
                           .apply(*backbone));
      const auto t = by_name(trainables);
      backbone->set_training(false);
      model::Batch batch = batch_for(backbone->config());
      batch.task = 1;  // mrpc
      backbone->forward(batch).loss.backward();
      const std::string label = model + " / " + method;
      const std::string own = method == "hyperprompt" ? "hyperprompt.global_prompt." : "attempt.target_prompt.";
      EXPECT_TRUE(no_gradient(t.at(own + "rte"))) << label;
      EXPECT_TRUE(no_gradient(t.at(own + "sst2"))) << label;
      ASSERT_TRUE(t.at(own + "mrpc").grad().defined()) << label;
      EXPECT_GT(t.at(own + "mrpc").grad().abs().max().item<double>(), 0.0) << label;
      if (method == "hyperprompt") {
        // The task embeddings are one table: only the batch's row gets a gradient.
        const at::Tensor g = t.at("hyperprompt.task_embedding.weight").grad();
        ASSERT_TRUE(g.defined()) << label;
        EXPECT_EQ(g[0].abs().max().item<double>(), 0.0) << label;
        EXPECT_EQ(g[2].abs().max().item<double>(), 0.0) << label;
        EXPECT_GT(g[1].abs().max().item<double>(), 0.0) << label;
      }
    }
  }
}

// ---- ATTEMPT reduces to prompt tuning -----------------------------------------------------------------

// The exact reduction: ATTEMPT with one source prompt S and its attention fixed to S is prompt tuning
// with prompt.embedding = S. "Fixed" means: the layer norm's gain is 0 and its shift is max-pool(S), so
// the query h = max-pool(S) for every input whatever W_down and W_up are; the target prompt is 0, so the
// scores are (|max-pool(S)|² / τ, 0); and τ = 1e-6 makes that gap so large that float32's softmax gives
// exactly a = (1, 0). Then P_inst = P_target + 1·S + 0·P_target = S, and the logits must equal prompt
// tuning's (max abs diff ≤ 1e-6; the same operations on the same values give 0).
TEST(Attempt, WithOnePromptAndItsAttentionFixedIsPromptTuning) {
  const std::string dir = temp_dir("reduction");
  for (const std::string model : {"tiny-llama", "tiny-t5", "tiny-bert"}) {
    const int64_t d = model::named_config(model).d_model, l = 4;
    at::manual_seed(21);
    const at::Tensor S = at::randn({l, d});
    const std::string path = write_prompt_checkpoint(dir + "/" + model, {{"prompt.embedding", S}});

    auto prompted = tiny(model);
    const auto prompt =
        by_name(without_head(method_set({"--method", "prompt", "--prompt.length", "4"}).apply(*prompted)));
    auto attempted = tiny(model);
    const auto attempt = by_name(without_head(
        method_set({"--method", "attempt", "--attempt.length", "4", "--attempt.projection", "3",
                    "--attempt.temperature", "1e-6", "--attempt.sources", path})
            .apply(*attempted)));
    {
      c10::NoGradGuard no_grad;
      prompt.at("prompt.embedding").copy_(S);
      attempt.at("attempt.target_prompt.default").zero_();
      attempt.at("attempt.layer_norm.weight").zero_();
      attempt.at("attempt.layer_norm.bias").copy_(std::get<0>(S.max(0)));
    }
    ASSERT_GT(std::get<0>(S.max(0)).pow(2).sum().item<double>(), 0.0);
    const at::Tensor want = logits_of(*prompted, 0), got = logits_of(*attempted, 0);
    const double diff = max_diff(want, got);
    EXPECT_LE(diff, 1e-6) << model;
    std::cout << "[ reduction ] " << model << ": max |attempt - prompt| = " << diff << "\n";
    // The check can fail: a nonzero target moves the logits (random, not constant: BERT's embedding
    // layer norm would remove a constant shift of every soft token).
    {
      c10::NoGradGuard no_grad;
      attempt.at("attempt.target_prompt.default").normal_(0.0, 1.0);
    }
    EXPECT_GT(max_diff(want, logits_of(*attempted, 0)), 1e-4) << model;
  }
  fs::remove_all(dir);
}

// ---- refusals ----------------------------------------------------------------------------------------

TEST(Attempt, RefusesBadSourceCheckpointsNamingTheFile) {
  const std::string dir = temp_dir("refuse");
  const int64_t d = model::named_config("tiny-t5").d_model;
  const std::vector<std::string> base = {"--method", "attempt", "--attempt.length", "4", "--attempt.sources"};
  auto apply_with = [&](const std::string& sources) {
    auto args = base;
    args.push_back(sources);
    return [args] {
      auto backbone = tiny("tiny-t5");
      method_set(args).apply(*backbone);
    };
  };
  // A missing file (refused when the option is read, before any model is loaded).
  const std::string missing = dir + "/nope.h5";
  std::string message = thrown_usage_message(apply_with(missing));
  EXPECT_NE(message.find("--attempt.sources"), std::string::npos) << message;
  EXPECT_NE(message.find(missing), std::string::npos) << message;
  // A prompt of another length than --attempt.length.
  const std::string longer = write_prompt_checkpoint(dir + "/long", {{"prompt.embedding", at::randn({5, d})}});
  message = thrown_usage_message(apply_with(longer));
  EXPECT_NE(message.find(longer), std::string::npos) << message;
  EXPECT_NE(message.find("[5, " + std::to_string(d) + "]"), std::string::npos) << message;
  // A prompt of another width than the model (a source tuned on another backbone).
  const std::string wider = write_prompt_checkpoint(dir + "/wide", {{"prompt.embedding", at::randn({4, d + 1})}});
  message = thrown_usage_message(apply_with(wider));
  EXPECT_NE(message.find(wider), std::string::npos) << message;
  // A checkpoint of another method.
  const std::string lora = write_prompt_checkpoint(dir + "/lora", {{"lora.A", at::randn({2, d})}});
  message = thrown_usage_message(apply_with(lora));
  EXPECT_NE(message.find(lora), std::string::npos) << message;
  EXPECT_NE(message.find("prompt.embedding"), std::string::npos) << message;
  // A file that is not a checkpoint at all.
  const std::string junk = dir + "/junk.h5";
  std::ofstream(junk) << "not hdf5";
  message = thrown_usage_message(apply_with(junk));
  EXPECT_NE(message.find(junk), std::string::npos) << message;
  // One good source among them does not hide a bad one.
  const std::string good = write_prompt_checkpoint(dir + "/good", {{"prompt.embedding", at::randn({4, d})}});
  EXPECT_EQ(thrown_usage_message(apply_with(good)), "nothing thrown");
  message = thrown_usage_message(apply_with(good + "," + longer));
  EXPECT_NE(message.find(longer), std::string::npos) << message;
  EXPECT_NE(thrown_usage_message(apply_with(good + ",")).find("empty file name"), std::string::npos);
  fs::remove_all(dir);
}

TEST(HyperpromptAttempt, BadOptionsAreUsageErrors) {
  EXPECT_THROW(method_set({"--method", "hyperprompt", "--hyperprompt.length", "0"}), UsageError);
  EXPECT_THROW(method_set({"--method", "hyperprompt", "--hyperprompt.bottleneck", "-1"}), UsageError);
  EXPECT_THROW(method_set({"--method", "hyperprompt", "--hyperprompt.task-dim", "0"}), UsageError);
  EXPECT_THROW(method_set({"--method", "attempt", "--attempt.length", "0"}), UsageError);
  EXPECT_THROW(method_set({"--method", "attempt", "--attempt.projection", "0"}), UsageError);
  EXPECT_THROW(method_set({"--method", "attempt", "--attempt.temperature", "-1"}), UsageError);
  EXPECT_EQ(method_set({"--method", "hyperprompt"}).describe(),
            "hyperprompt(length=16,bottleneck=16,task_dim=64,hidden=128,projected_dim=64)");
  EXPECT_EQ(method_set({"--method", "attempt"}).describe(),
            "attempt(length=100,projection=100,temperature=d*e,sources=[])");
}
