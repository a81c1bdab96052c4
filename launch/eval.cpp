// launch/eval.cpp — `deltatune eval CKPT`: a checkpoint's dev-set metrics, sharded across ranks.
//
// Design note: the model is rebuilt from the checkpoint alone (launch/from_checkpoint.h) and evaluated
// by the very function train calls at its evaluation steps (launch/task_model.h `evaluate`: every rank
// its exact shard, confusion counts summed), on the dev set as train read it — the same task, max-len
// and, unless --eval.max says otherwise, the same first N examples — so the accuracy printed here is
// the one the training log shows at that step, at any number of ranks. Rank 0 alone hashes the
// backbone for the identity check; a mismatch there aborts every rank (exit 2).
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <fstream>

#include "tasks/glue.h"
#include "launch/cli.h"
#include "launch/from_checkpoint.h"
#include "launch/session.h"
#include "launch/task_model.h"
#include "model/device.h"
#include "util/error.h"
#include "util/log.h"

namespace dt::launch {
namespace {

// One JSON object per dev example, in dev order: what went in and what came out, so another
// implementation (HF transformers + PEFT in tests/hf/peft_roundtrip.py) can run the same inputs.
void write_predictions(const std::string& path, const tasks::EncodedDataset& dev, const at::Tensor& logits) {
  std::ofstream f(path);
  const float* l = logits.data_ptr<float>();
  const int64_t labels = logits.size(1);
  for (int64_t i = 0; i < dev.size(); ++i) {
    const auto begin = dev.ids.begin() + dev.offsets[i], end = dev.ids.begin() + dev.offsets[i + 1];
    nlohmann::json j = {{"index", i},
                        {"logits", std::vector<float>(l + i * labels, l + (i + 1) * labels)},
                        {"input_ids", std::vector<int64_t>(begin, end)}};
    if (dev.regression) {  // STS-B: the score and the predicted score
      j["label"] = dev.scores[i];
      j["prediction"] = l[i * labels];
    } else {
      j["label"] = dev.labels[i];
      j["prediction"] = std::max_element(l + i * labels, l + (i + 1) * labels) - (l + i * labels);
    }
    const int64_t segment_b = i < static_cast<int64_t>(dev.segment_b.size()) ? dev.segment_b[i] : 0;
    if (segment_b > 0) {  // a BERT sentence pair: the token types collate gives it
      std::vector<int64_t> types(dev.length(i), 0);
      std::fill(types.begin() + segment_b, types.end(), 1);
      j["token_type_ids"] = types;
    }
    f << j.dump() << "\n";
  }
  if (!f) throw_usage_error("deltatune eval: --predictions: cannot write '" + path + "'");
}

int run_eval(const po::variables_map& vm) {
  if (!vm.count("checkpoint")) throw_usage_error("deltatune eval: give a checkpoint (file or train's --out directory)");
  SessionOptions session_options;
  session_options.backend = "mpi";  // evaluation is a few all-reduces of confusion counts
  session_options.log_all_ranks = vm["log-all-ranks"].as<bool>();
  session_options.threads = vm["threads"].as<int>();
  session_options.device = vm["device"].as<std::string>();
  Session session(session_options);
  comm::Communicator& comm = session.cpu_comm();

  const std::string path = resolve_checkpoint(vm["checkpoint"].as<std::string>(), "eval");
  CheckpointOverrides overrides;
  overrides.model = option_or_empty(vm, "model");
  overrides.tokenizer = option_or_empty(vm, "tokenizer");
  overrides.data = option_or_empty(vm, "data");
  overrides.task = option_or_empty(vm, "task");
  RestoredModel r = restore_model(path, overrides, /*check_identity=*/comm.rank() == 0);
  // The checkpoint's tasks, or those --task picks among them (restore_model refused any other).
  const tasks::TaskList& trained = r.task_list;
  std::vector<int64_t> which;
  if (overrides.task.empty()) {
    for (size_t t = 0; t < trained.tasks.size(); ++t) which.push_back(static_cast<int64_t>(t));
  } else {
    for (const tasks::TaskInfo* asked : tasks::parse_task_list(overrides.task).tasks) which.push_back(trained.index_of(asked->name));
  }
  const bool predictions = vm.count("predictions") > 0;
  if (predictions && which.size() > 1) {
    throw_usage_error("deltatune eval: --predictions writes one task's dev set; this checkpoint has " +
                      trained.names() + ": add --task <one of them>");
  }
  // Restored on the host; the forward runs on --device, the frozen weights in the training dtype (the
  // methods are attached already: what they train stays float32).
  model::backbone_to(*r.model.backbone, session.device(),
                     model::frozen_dtype(r.options["train.dtype"].as<std::string>()), /*only_frozen=*/true);
  r.methods.to(session.device(), r.trainables);
  log::info("eval {}: step {}, method {}, {} rank(s)", path, r.state.step, r.state.method, comm.size());

  const auto& cfg = r.options;
  int64_t max = vm["eval.max"].as<int64_t>();
  if (max < 0) max = cfg["train.eval-max"].as<int64_t>();
  int64_t batch_size = vm["eval.batch-size"].as<int64_t>();
  if (batch_size <= 0) batch_size = cfg["train.eval-batch-size"].as<int64_t>();
  std::vector<Evaluation> evaluations;
  nlohmann::json record;
  for (int64_t t : which) {
    const tasks::TaskInfo& task = *trained.tasks[t];
    // ---- the dev set as train read it --------------------------------------------------------------
    const auto encode =
        tasks::encode_options_for(r.model.backbone->config(), task.name, cfg["train.max-len"].as<int64_t>());
    const tasks::EncodedDataset dev = load_dev_set(cfg["data"].as<std::string>(), task, *r.model.tokenizer, encode, max);
    // ---- evaluate (collective) ----------------------------------------------------------------------
    const Evaluation e = evaluate(r.methods, *r.model.backbone, dev, trained, t, batch_size, comm, predictions);
    log::info("eval step {}: dev {} on {} examples of {} ({:.1f} s)", r.state.step, metrics_text(e, task),
              e.metrics.count, task.name, e.seconds);
    if (predictions && comm.rank() == 0) write_predictions(vm["predictions"].as<std::string>(), dev, e.logits);
    record = eval_record(r.state.step, e, task);
    evaluations.push_back(e);
  }
  if (trained.multi()) {
    // Every task of the run: train's multi-task record; some of them: each one's keys under its name.
    if (which.size() == trained.tasks.size()) {
      record = multitask_eval_record(r.state.step, evaluations, trained);
      log::info("eval step {}: average GLUE score {:.4f} over {}", r.state.step, record["eval_average"].get<double>(),
                trained.names());
    } else {
      tasks::TaskList picked;
      for (int64_t t : which) {
        picked.tasks.push_back(trained.tasks[t]);
        picked.head_offsets.push_back(trained.head_offsets[t]);
      }
      record = multitask_eval_record(r.state.step, evaluations, picked);
    }
  }

  if (comm.rank() == 0) {
    if (vm.count("json")) {
      const std::string out = vm["json"].as<std::string>();
      nlohmann::json j = record;
      j["checkpoint"] = path;
      j["task"] = overrides.task.empty() ? trained.names() : overrides.task;
      j["method"] = r.state.method;
      j["world_size"] = comm.size();
      std::ofstream f(out);
      f << j.dump(2) << "\n";
      if (!f) throw_usage_error("deltatune eval: --json: cannot write '" + out + "'");
    }
    if (vm.count("metrics")) {
      std::ofstream f(vm["metrics"].as<std::string>(), std::ios::app);
      f << record.dump() << "\n";
      if (!f) throw_usage_error("deltatune eval: --metrics: cannot write '" + vm["metrics"].as<std::string>() + "'");
    }
  }
  return 0;
}

}  // namespace

Subcommand eval_subcommand() {
  Subcommand sub;
  sub.name = "eval";
  sub.summary = "evaluate a checkpoint on its task's dev set (distributed under mpirun/srun)";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    desc.add_options()
        ("checkpoint", po::value<std::string>(), "checkpoint file, or train's --out directory (its latest checkpoint)")
        ("model", po::value<std::string>(), "the backbone, when it moved (default: the checkpoint's --model); "
         "its sha256 must equal the recorded one")
        ("tokenizer", po::value<std::string>(), "tokenizer file (default: the checkpoint's)")
        ("data", po::value<std::string>(), "GLUE data directory (default: the checkpoint's)")
        ("task", po::value<std::string>(), "the checkpoint's task, or some of a multi-task checkpoint's (default: all of "
         "them); another is refused")
        ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda | auto: where the forward runs")
        ("eval.batch-size", po::value<int64_t>()->default_value(0),
         "examples per rank per batch (0: the checkpoint's --train.eval-batch-size)")
        ("eval.max", po::value<int64_t>()->default_value(-1),
         "evaluate on the first N dev examples (0: all; -1: the checkpoint's --train.eval-max, as its training log)")
        ("json", po::value<std::string>(), "write step, eval_accuracy, eval_count (eval_mcc for CoLA) as one JSON "
         "object to PATH")
        ("metrics", po::value<std::string>(), "append the same keys as one JSON Lines object (train's --metrics format)")
        ("predictions", po::value<std::string>(), "write one JSON object per dev example to PATH (JSON Lines, dev "
         "order): index, label, prediction, logits, input_ids (and token_type_ids for sentence pairs)");
  };
  sub.positional = {"checkpoint"};
  sub.run = run_eval;
  return sub;
}

}  // namespace dt::launch
