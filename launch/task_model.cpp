// launch/task_model.cpp — see task_model.h.
#include "launch/task_model.h"

#include <c10/core/GradMode.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>

#include "model/device.h"
#include "model/load.h"
#include "dist/sampler.h"

namespace dt::launch {

TaskModel load_task_model(const std::string& model_arg, const std::string& tokenizer_path,
                          const tasks::TaskInfo& task) {
  TaskModel m;
  m.backbone = model::load_backbone(model_arg, task.num_labels);
  m.tokenizer = model::load_tokenizer(tokenizer_path);
  if (m.backbone->reads_label_words()) m.backbone->set_label_token_ids(tasks::label_first_token_ids(task, *m.tokenizer));
  return m;
}

tasks::EncodedDataset load_dev_set(const std::string& data_dir, const tasks::TaskInfo& task,
                                  const model::Tokenizer& tokenizer, const tasks::EncodeOptions& encode,
                                  int64_t max_examples) {
  auto examples = tasks::read_glue(data_dir, task.name, "dev");
  if (max_examples > 0 && max_examples < static_cast<int64_t>(examples.size())) examples.resize(max_examples);
  return tasks::encode_all(examples, tokenizer, encode);
}

nlohmann::json eval_record(int64_t step, const Evaluation& e, const tasks::TaskInfo& task) {
  nlohmann::json j = {{"step", step}, {"eval_accuracy", e.metrics.accuracy}, {"eval_count", e.metrics.count}};
  if (task.metric == tasks::MetricKind::Mcc) j["eval_mcc"] = e.metrics.mcc;
  return j;
}

Evaluation evaluate(const peft::MethodSet& methods, model::Backbone& backbone, const tasks::EncodedDataset& dev,
                    int64_t num_labels, int64_t batch_size, comm::Communicator& comm, bool keep_logits) {
  const auto start = std::chrono::steady_clock::now();
  const c10::Device device = model::backbone_device(backbone);
  c10::NoGradGuard no_grad;
  backbone.set_training(false);
  const auto shard = dist::shard_indices(dev.size(), comm.rank(), comm.size());
  dist::Confusion confusion(num_labels);
  at::Tensor logits = keep_logits ? at::zeros({dev.size(), num_labels}, at::kFloat) : at::Tensor();
  for (size_t begin = 0; begin < shard.size(); begin += batch_size) {
    const std::vector<int64_t> idx(shard.begin() + begin,
                                   shard.begin() + std::min(shard.size(), begin + batch_size));
    const model::Batch batch = tasks::collate(dev, idx);
    const auto out = methods.forward(backbone, model::batch_to(batch, device));
    confusion.add(batch.labels, out.logits.argmax(-1).to(at::kCPU));
    if (keep_logits) {
      logits.index_copy_(0, at::tensor(idx, at::kLong), out.logits.detach().to(at::kCPU, at::kFloat));
    }
  }
  backbone.set_training(true);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The confusion counts travel over the training communicator, on the device it reduces; the logits
  // (rows a rank did not evaluate are zero there) are summed the same way.
  Evaluation e{dist::gather_metrics(confusion, comm, device), seconds, at::Tensor()};
  if (keep_logits) {
    at::Tensor summed = logits.to(device);
    comm.all_reduce(summed)->wait();
    e.logits = summed.to(at::kCPU);
  }
  return e;
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

}  // namespace dt::launch
