// tasks/multitask.cpp — see multitask.h.
#include "tasks/multitask.h"

#include <cmath>
#include <random>
#include <set>
#include <sstream>

#include "util/error.h"

namespace dt::tasks {

std::string TaskList::names() const {
  std::string out;
  for (size_t t = 0; t < tasks.size(); ++t) out += (t ? "," : "") + tasks[t]->name;
  return out;
}

int64_t TaskList::index_of(const std::string& name) const {
  for (size_t t = 0; t < tasks.size(); ++t)
    if (tasks[t]->name == name) return static_cast<int64_t>(t);
  throw_usage_error("task '" + name + "' is not among this run's tasks (" + names() + ")");
}

TaskList parse_task_list(const std::string& arg) {
  TaskList list;
  std::set<std::string> seen;
  std::string name;
  std::istringstream in(arg);
  while (std::getline(in, name, ',')) {
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    if (name.empty()) throw_usage_error("--task '" + arg + "': an empty task name (write --task sst2,cola)");
    if (!seen.insert(name).second) throw_usage_error("--task '" + arg + "': " + name + " is named twice");
    const TaskInfo& task = glue_task(name);  // UsageError naming the known tasks
    list.tasks.push_back(&task);
    list.head_offsets.push_back(list.head_columns);
    list.head_columns += task.num_labels;
  }
  if (list.tasks.empty()) throw_usage_error("--task is empty (known: sst2, cola, ...)");
  return list;
}

void set_task_head(model::Batch& batch, const TaskList& list, int64_t task) {
  DT_CHECK(task >= 0 && task < static_cast<int64_t>(list.tasks.size()), "set_task_head: no task " + std::to_string(task));
  batch.task = task;
  if (!list.multi()) return;
  batch.head_offset = list.head_offsets[task];
  batch.head_size = list.tasks[task]->num_labels;
}

std::vector<int64_t> stacked_label_token_ids(const TaskList& list, const model::Tokenizer& tokenizer) {
  std::vector<int64_t> ids;
  for (const TaskInfo* task : list.tasks) {
    const std::vector<int64_t> first = label_first_token_ids(*task, tokenizer);
    ids.insert(ids.end(), first.begin(), first.end());
  }
  return ids;
}

MixKind parse_mix_kind(const std::string& name) {
  if (name == "proportional") return MixKind::Proportional;
  if (name == "temperature") return MixKind::Temperature;
  throw_usage_error("--multitask.mix '" + name + "' (known: proportional, temperature)");
}

BatchKind parse_batch_kind(const std::string& name) {
  if (name == "task") return BatchKind::OneTask;
  if (name == "mixed") return BatchKind::Mixed;
  throw_usage_error("--multitask.batch must be task (one task per batch) or mixed (a task per row), got '" + name +
                    "'");
}

std::vector<double> mixing_rates(const std::vector<int64_t>& sizes, const MixOptions& options) {
  DT_CHECK(!sizes.empty(), "mixing_rates: no tasks");
  if (options.kind == MixKind::Temperature && !(options.temperature > 0)) {
    throw_usage_error("--multitask.temperature must be positive, got " + std::to_string(options.temperature));
  }
  if (options.cap < 0) throw_usage_error("--multitask.cap must be >= 0 (0: no cap)");
  std::vector<double> rates;
  double total = 0;
  for (int64_t n : sizes) {
    DT_CHECK(n > 0, "mixing_rates: a task without training examples");
    double w = static_cast<double>(options.cap > 0 ? std::min(n, options.cap) : n);
    if (options.kind == MixKind::Temperature) w = std::pow(w, 1.0 / options.temperature);
    rates.push_back(w);
    total += w;
  }
  for (double& r : rates) r /= total;
  return rates;
}

MultiTaskSampler::MultiTaskSampler(const std::vector<int64_t>& sizes, int rank, int world_size, const MixOptions& mix,
                                   const dist::SamplerOptions& options)
    : rates_(mixing_rates(sizes, mix)), seed_(options.seed), batch_kind_(mix.batch) {
  for (size_t t = 0; t < sizes.size(); ++t) {
    dist::SamplerOptions task_options = options;
    task_options.seed = options.seed + t;
    samplers_.emplace_back(sizes[t], rank, world_size, task_options);
  }
  double sum = 0;
  for (double r : rates_) cumulative_.push_back(sum += r);
  cumulative_.back() = 1.0;  // no rounding gap above the last task
}

namespace {

// An engine per batch, seeded from (seed, index, salt) through std::seed_seq (whose algorithm the
// standard fixes, as it fixes the engine's): a batch's draws never depend on the batches before it.
std::mt19937_64 batch_engine(uint64_t seed, int64_t index, uint32_t salt) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(index),
                    static_cast<uint32_t>(static_cast<uint64_t>(index) >> 32), salt};
  return std::mt19937_64(seq);
}

double unit_draw(std::mt19937_64& engine) {
  return static_cast<double>(engine() >> 11) * 0x1.0p-53;  // [0, 1) from the top 53 bits
}

}  // namespace

int64_t MultiTaskSampler::task_at(double u) const {
  int64_t t = 0;
  while (u >= cumulative_[t]) ++t;
  return t;
}

int64_t MultiTaskSampler::task_of(int64_t index) const {
  if (samplers_.size() == 1) return 0;
  std::mt19937_64 engine = batch_engine(seed_, index, 0x6d697875u /* "mixu" */);
  return task_at(unit_draw(engine));
}

std::vector<int64_t> MultiTaskSampler::task_counts(int64_t index, int64_t batch_size) const {
  std::vector<int64_t> counts(samplers_.size(), 0);
  if (batch_kind_ == BatchKind::OneTask || samplers_.size() == 1) {
    counts[task_of(index)] = batch_size;
    return counts;
  }
  std::mt19937_64 engine = batch_engine(seed_, index, 0x6d697872u /* "mixr" */);
  for (int64_t row = 0; row < batch_size; ++row) ++counts[task_at(unit_draw(engine))];
  return counts;
}

std::vector<MultiTaskSampler::Part> MultiTaskSampler::next_batch(int64_t batch_size) {
  const std::vector<int64_t> counts = task_counts(batches_++, batch_size);
  std::vector<Part> parts;
  for (size_t t = 0; t < counts.size(); ++t) {
    if (counts[t] == 0) continue;
    Part part{static_cast<int64_t>(t), samplers_[t].next_batch(counts[t])};
    if (!part.rows.empty()) parts.push_back(std::move(part));
  }
  return parts;
}

MultiTaskSampler::State MultiTaskSampler::state() const {
  State s;
  s.batches = batches_;
  for (const auto& sampler : samplers_) s.tasks.push_back(sampler.state());
  return s;
}

void MultiTaskSampler::set_state(const State& state) {
  DT_CHECK(state.tasks.size() == samplers_.size(), "multi-task sampler state of " + std::to_string(state.tasks.size()) +
                                                       " tasks for a run of " + std::to_string(samplers_.size()));
  DT_CHECK(state.batches >= 0, "multi-task sampler state: negative batch count");
  batches_ = state.batches;
  for (size_t t = 0; t < samplers_.size(); ++t) samplers_[t].set_state(state.tasks[t]);
}

std::string MultiTaskSampler::state_text() const {
  std::ostringstream out;
  out << "mix-v1 batches=" << batches_ << " tasks=" << samplers_.size();
  for (const auto& sampler : samplers_) out << " " << sampler.state().epoch << ":" << sampler.state().position;
  return out.str();
}

void MultiTaskSampler::set_state_text(const std::string& text) {
  auto bad = [&](const std::string& why) -> void {
    throw_usage_error("multi-task sampler state '" + text + "': " + why);
  };
  std::istringstream in(text);
  std::string version, batches, count;
  in >> version >> batches >> count;
  if (version != "mix-v1") bad("not a mix-v1 state");
  if (batches.rfind("batches=", 0) != 0 || count.rfind("tasks=", 0) != 0) bad("expected batches=N tasks=T");
  State state;
  size_t tasks = 0;
  try {
    state.batches = std::stoll(batches.substr(8));
    tasks = std::stoul(count.substr(6));
  } catch (const std::exception&) {
    bad("a count that is not a number");
  }
  if (tasks != samplers_.size()) {
    bad("it holds " + std::to_string(tasks) + " tasks, this run has " + std::to_string(samplers_.size()));
  }
  for (size_t t = 0; t < tasks; ++t) {
    std::string item;
    if (!(in >> item)) bad("task " + std::to_string(t) + " is missing");
    const size_t colon = item.find(':');
    if (colon == std::string::npos) bad("task " + std::to_string(t) + " is not epoch:position");
    dist::DistributedSampler::State s;
    try {
      s.epoch = std::stoll(item.substr(0, colon));
      s.position = std::stoll(item.substr(colon + 1));
    } catch (const std::exception&) {
      bad("task " + std::to_string(t) + " is not epoch:position");
    }
    if (s.epoch < 0 || s.position < 0) bad("negative epoch or position");
    state.tasks.push_back(s);
  }
  std::string extra;
  if (in >> extra) bad("trailing text '" + extra + "'");
  if (state.batches < 0) bad("negative batch count");
  set_state(state);
}

}  // namespace dt::tasks
