// launch/task_model.cpp — see task_model.h.
#include "launch/task_model.h"

#include <c10/core/GradMode.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "dist/agreement.h"
#include "model/device.h"
#include "model/load.h"
#include "dist/sampler.h"
#include "util/error.h"
#include "util/log.h"
#include <fmt/format.h>
#include <fmt/ranges.h>

namespace dt::launch {

TaskModel load_task_model(const std::string& model_arg, const std::string& tokenizer_path,
                          const tasks::TaskList& task_list) {
  TaskModel m;
  m.backbone = model::load_backbone(model_arg, task_list.head_columns);
  m.tokenizer = model::load_tokenizer(tokenizer_path);
  if (m.backbone->reads_label_words()) {
    m.backbone->set_label_token_ids(tasks::stacked_label_token_ids(task_list, *m.tokenizer));
  }
  return m;
}

tasks::EncodedDataset load_dev_set(const std::string& data_dir, const tasks::TaskInfo& task,
                                  const model::Tokenizer& tokenizer, const tasks::EncodeOptions& encode,
                                  int64_t max_examples) {
  auto examples = tasks::read_glue(data_dir, task.name, "dev");
  if (max_examples > 0 && max_examples < static_cast<int64_t>(examples.size())) examples.resize(max_examples);
  return tasks::encode_all(examples, tokenizer, encode);
}

namespace {

// The metrics a task reports, in the order the log and the records show them.
std::vector<std::pair<std::string, double>> task_metrics(const Evaluation& e, const tasks::TaskInfo& task) {
  if (task.regression) return {{"pearson", e.metrics.pearson}, {"spearman", e.metrics.spearman}};
  std::vector<std::pair<std::string, double>> out = {{"accuracy", e.metrics.accuracy}};
  if (task.metric == tasks::MetricKind::Mcc) out.emplace_back("mcc", e.metrics.mcc);
  if (task.metric == tasks::MetricKind::F1) out.emplace_back("f1", e.metrics.f1);
  return out;
}

}  // namespace

nlohmann::json eval_record(int64_t step, const Evaluation& e, const tasks::TaskInfo& task) {
  nlohmann::json j = {{"step", step}, {"eval_count", e.metrics.count}};
  for (const auto& [key, value] : task_metrics(e, task)) j["eval_" + key] = value;
  return j;
}

nlohmann::json multitask_eval_record(int64_t step, const std::vector<Evaluation>& evaluations,
                                     const tasks::TaskList& task_list) {
  DT_CHECK(evaluations.size() == task_list.tasks.size(), "multitask_eval_record: one evaluation per task");
  nlohmann::json j = {{"step", step}};
  double sum = 0;
  for (size_t t = 0; t < evaluations.size(); ++t) {
    const tasks::TaskInfo& task = *task_list.tasks[t];
    const std::string prefix = "eval/" + task.name + "/";
    j[prefix + "count"] = evaluations[t].metrics.count;
    for (const auto& [key, value] : task_metrics(evaluations[t], task)) j[prefix + key] = value;
    sum += tasks::headline_score(task, evaluations[t].metrics);
  }
  j["eval_average"] = sum / static_cast<double>(evaluations.size());
  return j;
}

std::string metrics_text(const Evaluation& e, const tasks::TaskInfo& task) {
  std::string out;
  for (const auto& [key, value] : task_metrics(e, task)) out += fmt::format("{}{} {:.4f}", out.empty() ? "" : ", ", key, value);
  return out;
}

Evaluation evaluate(const peft::MethodSet& methods, model::Backbone& backbone, const tasks::EncodedDataset& dev,
                    const tasks::TaskList& task_list, int64_t task, int64_t batch_size, comm::Communicator& comm,
                    bool keep_logits) {
  const auto start = std::chrono::steady_clock::now();
  const c10::Device device = model::backbone_device(backbone);
  const int64_t num_labels = task_list.tasks.at(task)->num_labels;
  c10::NoGradGuard no_grad;
  backbone.set_training(false);
  const auto shard = dist::shard_indices(dev.size(), comm.rank(), comm.size());
  dist::Confusion confusion(dev.regression ? 2 : num_labels);  // regression: unused (and empty)
  at::Tensor logits = keep_logits || dev.regression ? at::zeros({dev.size(), num_labels}, at::kFloat) : at::Tensor();
  for (size_t begin = 0; begin < shard.size(); begin += batch_size) {
    const std::vector<int64_t> idx(shard.begin() + begin,
                                   shard.begin() + std::min(shard.size(), begin + batch_size));
    model::Batch batch = tasks::collate(dev, idx);
    tasks::set_task_head(batch, task_list, task);
    const auto out = methods.forward(backbone, model::batch_to(batch, device));
    if (!dev.regression) confusion.add(batch.labels, out.logits.argmax(-1).to(at::kCPU));
    if (logits.defined()) {
      logits.index_copy_(0, at::tensor(idx, at::kLong), out.logits.detach().to(at::kCPU, at::kFloat));
    }
  }
  backbone.set_training(true);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The confusion counts travel over the training communicator, on the device it reduces; the logits
  // (rows a rank did not evaluate are zero there) are summed the same way.
  Evaluation e{dist::gather_metrics(confusion, comm, device), seconds, at::Tensor()};
  if (logits.defined()) {
    at::Tensor summed = logits.to(device);
    comm.all_reduce(summed)->wait();
    e.logits = summed.to(at::kCPU);
  }
  if (dev.regression) {
    const at::Tensor predicted = e.logits.select(1, 0).to(at::kDouble).contiguous();
    const std::vector<double> x(predicted.data_ptr<double>(), predicted.data_ptr<double>() + dev.size());
    const std::vector<double> y(dev.scores.begin(), dev.scores.end());
    e.metrics.count = dev.size();
    e.metrics.pearson = dist::pearson(x, y);
    e.metrics.spearman = dist::spearman(x, y);
    if (!keep_logits) e.logits = at::Tensor();
  }
  return e;
}

// What methods that learn from data see (FISH's Fisher samples): training examples in an order drawn
// from `seed` (--fish.seed at start, shifted by the step at each --fish.refresh-every). Several tasks:
// one order over all their examples (so each task's share is its size's), each id its task's row.
peft::TrainingData training_samples(const std::vector<tasks::EncodedDataset>& train, const tasks::TaskList& task_list,
                                    uint64_t seed) {
  std::vector<std::pair<int64_t, int64_t>> rows;  // (task, row) of every example of every task
  for (size_t t = 0; t < train.size(); ++t)
    for (int64_t i = 0; i < train[t].size(); ++i) rows.emplace_back(static_cast<int64_t>(t), i);
  auto order = std::make_shared<std::vector<int64_t>>(dist::portable_permutation(static_cast<int64_t>(rows.size()), seed));
  auto sample = [&train, &task_list, rows = std::move(rows), order](const std::vector<int64_t>& ids) {
    std::vector<int64_t> picked;
    int64_t task = -1;
    for (int64_t i : ids) {
      const auto [t, row] = rows.at(order->at(i));
      if (task >= 0 && t != task) {
        throw_usage_error("a batch of data-dependent set-up samples (e.g. --fish.fisher batch) holds rows of " +
                          task_list.tasks[task]->name + " and " + task_list.tasks[t]->name +
                          "; with several tasks use per-sample passes (--fish.fisher sample)");
      }
      task = t;
      picked.push_back(row);
    }
    DT_CHECK(task >= 0, "training_samples: an empty batch");
    model::Batch batch = tasks::collate(train[task], picked);
    tasks::set_task_head(batch, task_list, task);
    return batch;
  };
  const int64_t available = static_cast<int64_t>(order->size());
  return {sample, available};
}

std::vector<dist::SparseIndex> checkpoint_indices(const peft::MethodSet& methods) {
  std::vector<dist::SparseIndex> out;
  for (auto& e : sparse::encoded_indices(methods)) {
    out.push_back({e.name, "deltatune-index-v1", std::move(e.bytes), e.count, e.numel});
  }
  return out;
}

std::vector<sparse::EncodedIndices> stored_indices(const std::vector<dist::SparseIndex>& saved) {
  std::vector<sparse::EncodedIndices> out;
  for (const auto& i : saved) out.push_back({i.name, i.bytes, i.count, i.numel});
  return out;
}

SessionOptions session_options(const po::variables_map& vm) {
  SessionOptions o;
  o.backend = vm["dist.backend"].as<std::string>();
  o.log_all_ranks = vm["log-all-ranks"].as<bool>();
  o.threads = vm["threads"].as<int>();
  o.device = vm["device"].as<std::string>();
  return o;
}

TaskModel load_model(const po::variables_map& vm, const tasks::TaskList& task_list, const c10::Device& device,
                     uint64_t seed) {
  const auto frozen_dtype = model::frozen_dtype(vm["train.dtype"].as<std::string>());  // before any loading
  at::manual_seed(seed);
  TaskModel m = load_task_model(vm["model"].as<std::string>(), vm["tokenizer"].as<std::string>(), task_list);
  if (frozen_dtype && m.backbone->config().arch != model::Arch::T5) {
    throw_usage_error("--train.dtype bf16 is implemented for T5 backbones (norms, softmax and loss in fp32); "
                      "use fp32 for " + m.backbone->config().name);
  }
  model::backbone_to(*m.backbone, device, frozen_dtype);
  return m;
}

std::string frozen_hash(const model::Backbone& backbone) {
  std::vector<at::Tensor> frozen;
  for (const auto& [name, tensor] : backbone.named_parameters()) {
    if (!tensor.requires_grad()) frozen.push_back(tensor);
  }
  return dist::hash_hex(dist::hash_tensors(frozen));
}

namespace {

// Names, shapes and dtypes of the frozen tensors and 1,024 evenly spaced values of each: catches ranks
// whose loads differ (another cast, a tensor missing from the file and drawn at random) at a cost of
// kilobytes, whatever the model's size.
std::string frozen_fingerprint(const model::Backbone& backbone) {
  constexpr int64_t kSamples = 1024;
  std::string layout;
  std::vector<at::Tensor> samples;
  for (const auto& [name, tensor] : backbone.named_parameters()) {
    if (tensor.requires_grad()) continue;
    layout += fmt::format("{}:{}:{};", name, fmt::join(tensor.sizes(), "x"), c10::toString(tensor.scalar_type()));
    const at::Tensor flat = tensor.detach().reshape(-1);
    const int64_t n = flat.numel();
    if (n <= kSamples) {
      samples.push_back(flat);
      continue;
    }
    const at::Tensor positions =
        at::arange(kSamples, at::TensorOptions().dtype(at::kLong).device(flat.device())) * (n / kSamples);
    samples.push_back(flat.index_select(0, positions));
  }
  return dist::sha256_hex(layout.data(), layout.size()).substr(0, 16) + "/" +
         dist::hash_hex(dist::hash_tensors(samples));
}

}  // namespace

FrozenIdentity identify_frozen(const std::string& model_arg, const model::Backbone& backbone,
                               comm::Communicator& comm) {
  FrozenIdentity id;
  std::error_code ec;
  const std::string weights = model::resolve_model_path(model_arg);
  if (std::filesystem::is_regular_file(weights, ec)) {
    const std::vector<RankPlace> places = gather_placement(comm);
    bool host_leader = true;  // the lowest rank on this host
    for (int r = 0; r < comm.rank(); ++r) host_leader &= places[r].host != places[comm.rank()].host;
    dist::FileDigest digest;
    if (host_leader) digest = dist::sha256_file_cached(weights);
    comm.barrier()->wait();
    if (!host_leader) digest = dist::sha256_file_cached(weights);
    id.weights_sha256 = digest.sha256;
    if (digest.from_cache) {
      log::info("backbone: {} sha256 {} (cached: {})", weights, digest.sha256.substr(0, 16), digest.cache_path);
    } else {
      log::info("backbone: {} sha256 {} hashed in {:.1f} s{}", weights, digest.sha256.substr(0, 16), digest.seconds,
                digest.cache_path.empty() ? "" : " (cached for the next start-up: " + digest.cache_path + ")");
    }
  } else {
    id.tensors_hash = frozen_hash(backbone);  // a named config: its seeded random init is its identity
  }
  id.agreed = backbone.config().name + ":" + (id.weights_sha256.empty() ? id.tensors_hash : id.weights_sha256) +
              ":" + frozen_fingerprint(backbone);
  return id;
}

}  // namespace dt::launch
