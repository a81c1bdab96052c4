// tests/tasks/test_multitask.cpp — task lists, stacked per-task heads, mixing rates and the multi-task
// sampler (issue 16 §1).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cmath>
#include <map>

#include "dist/sampler.h"
#include "model/load.h"
#include "tasks/multitask.h"
#include "util/error.h"

namespace dt::tasks {
namespace {

TEST(TaskList, StacksTheHeadsInOrder) {
  const TaskList list = parse_task_list("sst2, cola,stsb");
  ASSERT_EQ(list.tasks.size(), 3u);
  EXPECT_EQ(list.names(), "sst2,cola,stsb");
  EXPECT_EQ(list.head_offsets, (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(list.head_columns, 5);  // 2 + 2 + 1 (STS-B regresses one score)
  EXPECT_TRUE(list.multi());
  EXPECT_EQ(list.index_of("stsb"), 2);
  EXPECT_THROW(list.index_of("rte"), UsageError);
  const TaskList one = parse_task_list("rte");
  EXPECT_FALSE(one.multi());
  EXPECT_EQ(one.head_columns, 2);
}

TEST(TaskList, RefusesBadLists) {
  EXPECT_THROW(parse_task_list(""), UsageError);
  EXPECT_THROW(parse_task_list("sst2,,cola"), UsageError);
  EXPECT_THROW(parse_task_list("sst2,cola,sst2"), UsageError);
  EXPECT_THROW(parse_task_list("sst2,mnli"), UsageError);
}

TEST(TaskHead, SingleTaskBatchesUseEveryColumn) {
  model::Batch batch;
  set_task_head(batch, parse_task_list("cola"), 0);
  EXPECT_EQ(batch.head_size, 0);
  EXPECT_EQ(batch.task, 0);
  set_task_head(batch, parse_task_list("sst2,cola"), 1);
  EXPECT_EQ(batch.head_offset, 2);
  EXPECT_EQ(batch.head_size, 2);
  EXPECT_EQ(batch.task, 1);
}

// The loss of a batch of task t over the stacked head equals the loss of task t's own head alone, and no
// other task's rows get a gradient: a head per task under one name.
TEST(TaskHead, ABatchTrainsOnlyItsTasksRows) {
  torch::manual_seed(3);
  const TaskList list = parse_task_list("sst2,stsb,rte");  // columns 0-1, 2, 3-4
  auto backbone = model::make_backbone(model::named_config("tiny-bert"), list.head_columns);
  at::Tensor weight, bias;
  for (auto& [name, t] : backbone->named_parameters()) {
    if (name == "classifier.weight") weight = t;
    if (name == "classifier.bias") bias = t;
  }
  ASSERT_TRUE(weight.defined() && bias.defined());
  EXPECT_EQ(weight.size(0), 5);
  weight.requires_grad_(true);
  backbone->set_training(false);
  model::Batch batch;
  batch.input_ids = torch::tensor({{2, 5, 9, 3}, {2, 7, 3, 0}}, torch::kLong);
  batch.attention_mask = torch::tensor({{1, 1, 1, 1}, {1, 1, 1, 0}}, torch::kLong);

  // Classification (rte: columns 3-4).
  model::Batch rte = batch;
  rte.labels = torch::tensor({1, 0}, torch::kLong);
  set_task_head(rte, list, 2);
  const auto out = backbone->forward(rte);
  model::Batch all = batch;  // every column, no labels: the stacked logits
  const at::Tensor stacked = backbone->forward(all).logits.detach();
  ASSERT_EQ(out.logits.sizes(), (at::IntArrayRef{2, 2}));
  EXPECT_TRUE(at::equal(out.logits.detach(), stacked.narrow(1, 3, 2)));
  const at::Tensor reference = at::cross_entropy_loss(stacked.narrow(1, 3, 2), rte.labels);
  EXPECT_NEAR(out.loss.item<double>(), reference.item<double>(), 1e-6);
  out.loss.backward();
  const at::Tensor g = weight.grad();
  EXPECT_EQ(g.narrow(0, 0, 3).abs().sum().item<double>(), 0.0) << "sst2's and stsb's rows got a gradient";
  EXPECT_GT(g.narrow(0, 3, 2).abs().sum().item<double>(), 0.0);
  weight.grad().zero_();

  // Regression (stsb: column 2): float labels, mean squared error of the one column.
  model::Batch stsb = batch;
  stsb.labels = torch::tensor({3.8f, 1.25f});
  set_task_head(stsb, list, 1);
  const auto reg = backbone->forward(stsb);
  ASSERT_EQ(reg.logits.sizes(), (at::IntArrayRef{2, 1}));
  const at::Tensor pred = stacked.select(1, 2);
  const double mse = ((pred[0].item<double>() - 3.8) * (pred[0].item<double>() - 3.8) +
                      (pred[1].item<double>() - 1.25) * (pred[1].item<double>() - 1.25)) / 2;
  EXPECT_NEAR(reg.loss.item<double>(), mse, 1e-5);
  reg.loss.backward();
  EXPECT_EQ(weight.grad().narrow(0, 0, 2).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(weight.grad().narrow(0, 3, 2).abs().sum().item<double>(), 0.0);
  EXPECT_GT(weight.grad().narrow(0, 2, 1).abs().sum().item<double>(), 0.0);
}

TEST(Mixing, RatesFollowTheFormulas) {
  const std::vector<int64_t> sizes = {67349, 8551, 2490};
  const double total = 67349.0 + 8551.0 + 2490.0;
  const auto proportional = mixing_rates(sizes, {});
  for (size_t t = 0; t < sizes.size(); ++t) EXPECT_DOUBLE_EQ(proportional[t], sizes[t] / total);
  MixOptions capped;
  capped.cap = 5000;  // min(n, 5000): 5000, 5000, 2490
  const auto c = mixing_rates(sizes, capped);
  EXPECT_DOUBLE_EQ(c[0], 5000.0 / 12490.0);
  EXPECT_DOUBLE_EQ(c[2], 2490.0 / 12490.0);
  MixOptions temp;
  temp.kind = MixKind::Temperature;
  temp.temperature = 2.0;  // sqrt(n) / Σ sqrt(n)
  const auto t2 = mixing_rates(sizes, temp);
  const double roots = std::sqrt(67349.0) + std::sqrt(8551.0) + std::sqrt(2490.0);
  EXPECT_NEAR(t2[1], std::sqrt(8551.0) / roots, 1e-15);
  temp.temperature = 1.0;  // T = 1 is proportional
  const auto t1 = mixing_rates(sizes, temp);
  for (size_t t = 0; t < sizes.size(); ++t) EXPECT_NEAR(t1[t], proportional[t], 1e-15);
  temp.temperature = 0;
  EXPECT_THROW(mixing_rates(sizes, temp), UsageError);
  capped.cap = -1;
  EXPECT_THROW(mixing_rates(sizes, capped), UsageError);
  EXPECT_EQ(parse_mix_kind("temperature"), MixKind::Temperature);
  EXPECT_THROW(parse_mix_kind("uniform"), UsageError);
}

TEST(MultiTaskSampler, EveryRankDrawsTheSameTasksAtTheMixingRates) {
  const std::vector<int64_t> sizes = {900, 300, 100};
  dist::SamplerOptions options;
  options.seed = 11;
  std::vector<MultiTaskSampler> ranks;
  for (int r = 0; r < 4; ++r) ranks.emplace_back(sizes, r, 4, MixOptions{}, options);
  const int64_t draws = 20000;
  std::vector<int64_t> counts(3, 0);
  for (int64_t b = 0; b < draws; ++b) {
    std::vector<int64_t> tasks;
    for (auto& s : ranks) {
      const auto parts = s.next_batch(4);
      ASSERT_EQ(parts.size(), 1u);  // one task per batch
      ASSERT_TRUE(!parts[0].rows.empty() && parts[0].rows.size() <= 4u);  // an epoch's last batch may be short
      tasks.push_back(parts[0].task);
    }
    for (int r = 1; r < 4; ++r) ASSERT_EQ(tasks[r], tasks[0]) << "rank " << r << " drew another task at batch " << b;
    ++counts[tasks[0]];
  }
  // Binomial: 5 standard deviations around rate * draws.
  const std::vector<double> rates = {900.0 / 1300, 300.0 / 1300, 100.0 / 1300};
  for (size_t t = 0; t < 3; ++t) {
    const double sd = std::sqrt(draws * rates[t] * (1 - rates[t]));
    EXPECT_NEAR(static_cast<double>(counts[t]), draws * rates[t], 5 * sd) << "task " << t;
  }
  // Another seed, another sequence.
  dist::SamplerOptions other = options;
  other.seed = 12;
  MultiTaskSampler a(sizes, 0, 1, MixOptions{}, options), b(sizes, 0, 1, MixOptions{}, other);
  int same = 0;
  for (int64_t i = 0; i < 200; ++i) same += a.task_of(i) == b.task_of(i);
  EXPECT_LT(same, 200);
}

TEST(MultiTaskSampler, MixedBatchesDrawEveryRowsTaskTheSameOnEveryRank) {
  const std::vector<int64_t> sizes = {900, 300, 100};
  dist::SamplerOptions options;
  options.seed = 3;
  MixOptions mix;
  mix.batch = BatchKind::Mixed;
  EXPECT_EQ(parse_batch_kind("mixed"), BatchKind::Mixed);
  EXPECT_EQ(parse_batch_kind("task"), BatchKind::OneTask);
  EXPECT_THROW(parse_batch_kind("rows"), UsageError);
  std::vector<MultiTaskSampler> ranks;
  for (int r = 0; r < 2; ++r) ranks.emplace_back(sizes, r, 2, mix, options);
  const int64_t batches = 3000, batch_size = 8;
  std::vector<int64_t> rows_of(3, 0);
  int64_t several = 0;
  for (int64_t b = 0; b < batches; ++b) {
    std::vector<std::vector<MultiTaskSampler::Part>> drawn;
    for (auto& s : ranks) drawn.push_back(s.next_batch(batch_size));
    ASSERT_EQ(drawn[0].size(), drawn[1].size()) << "batch " << b;
    int64_t total = 0;
    for (size_t p = 0; p < drawn[0].size(); ++p) {
      ASSERT_EQ(drawn[0][p].task, drawn[1][p].task) << "batch " << b;
      ASSERT_EQ(drawn[0][p].rows.size(), drawn[1][p].rows.size()) << "batch " << b;
      if (p > 0) {
        ASSERT_LT(drawn[0][p - 1].task, drawn[0][p].task);  // task order, none twice
      }
      rows_of[drawn[0][p].task] += static_cast<int64_t>(drawn[0][p].rows.size());
      total += static_cast<int64_t>(drawn[0][p].rows.size());
    }
    EXPECT_LE(total, batch_size);
    several += drawn[0].size() > 1;
  }
  EXPECT_GT(several, batches / 2);  // mixed batches really mix
  // Rows, not batches, follow the rates: within 5 standard deviations of a binomial over all rows drawn
  // (a task's epoch end can shorten a part, so count what was drawn).
  const double drawn_rows = static_cast<double>(rows_of[0] + rows_of[1] + rows_of[2]);
  const std::vector<double> rates = {900.0 / 1300, 300.0 / 1300, 100.0 / 1300};
  for (size_t t = 0; t < 3; ++t) {
    const double sd = std::sqrt(drawn_rows * rates[t] * (1 - rates[t]));
    EXPECT_NEAR(static_cast<double>(rows_of[t]), drawn_rows * rates[t], 5 * sd) << "task " << t;
  }
  // The counts are a pure function of (seed, batch): equal to task_counts, and independent of the rank.
  MultiTaskSampler fresh(sizes, 1, 2, mix, options);
  const auto counts = fresh.task_counts(0, batch_size);
  const auto first = fresh.next_batch(batch_size);
  int64_t sum = 0;
  for (const auto& part : first) {
    EXPECT_EQ(static_cast<int64_t>(part.rows.size()), counts[part.task]);
    sum += counts[part.task];
  }
  EXPECT_EQ(sum, batch_size);
}

TEST(MultiTaskSampler, OneTaskIsTheSingleTaskSampler) {
  dist::SamplerOptions options;
  options.seed = 5;
  MultiTaskSampler multi({103}, 1, 2, MixOptions{}, options);
  dist::DistributedSampler single(103, 1, 2, options);
  for (int i = 0; i < 40; ++i) {  // several epochs
    const auto parts = multi.next_batch(8);
    ASSERT_EQ(parts.size(), 1u);
    EXPECT_EQ(parts[0].task, 0);
    ASSERT_EQ(parts[0].rows, single.next_batch(8)) << "batch " << i;
  }
}

TEST(MultiTaskSampler, ResumesBitForBitFromItsText) {
  const std::vector<int64_t> sizes = {50, 37, 20};
  dist::SamplerOptions options;
  options.seed = 7;
  MixOptions mix;
  mix.kind = MixKind::Temperature;
  mix.temperature = 3;
  for (BatchKind kind : {BatchKind::OneTask, BatchKind::Mixed}) {
    mix.batch = kind;
    MultiTaskSampler straight(sizes, 0, 2, mix, options), first(sizes, 0, 2, mix, options);
    for (int i = 0; i < 23; ++i) {
      straight.next_batch(4);
      first.next_batch(4);
    }
    const std::string text = first.state_text();
    EXPECT_EQ(text.rfind("mix-v1 batches=23 tasks=3 ", 0), 0u) << text;
    MultiTaskSampler resumed(sizes, 0, 2, mix, options);
    resumed.set_state_text(text);
    for (int i = 0; i < 60; ++i) {
      const auto a = straight.next_batch(4), b = resumed.next_batch(4);
      ASSERT_EQ(a.size(), b.size()) << "batch " << i;
      for (size_t p = 0; p < a.size(); ++p) {
        ASSERT_EQ(a[p].task, b[p].task) << "batch " << i;
        ASSERT_EQ(a[p].rows, b[p].rows) << "batch " << i;
      }
    }
  }
  mix.batch = BatchKind::OneTask;
  MultiTaskSampler resumed(sizes, 0, 2, mix, options), first(sizes, 0, 2, mix, options);
  const std::string text = first.state_text();
  MultiTaskSampler two({50, 37}, 0, 2, mix, options);
  EXPECT_THROW(two.set_state_text(text), UsageError);  // another number of tasks
  EXPECT_THROW(resumed.set_state_text("mix-v1 batches=x tasks=3 0:0 0:0 0:0"), UsageError);
  EXPECT_THROW(resumed.set_state_text("mix-v1 batches=1 tasks=3 0:0 0:0"), UsageError);
  EXPECT_THROW(resumed.set_state_text("mix-v1 batches=1 tasks=3 0:0 0:0 0:0 junk"), UsageError);
  EXPECT_THROW(resumed.set_state_text("mix-v2 batches=1 tasks=3 0:0 0:0 0:0"), UsageError);
}

}  // namespace
}  // namespace dt::tasks
