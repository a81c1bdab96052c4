// launch/mask.cpp — `deltatune mask`: compute a FISH mask from the distributed Fisher and save it.
//
// Design note: the same data path as `train` (GLUE train split, encode_all, collate), the same seed
// and model loading, so `mask` then `train --fish.mask M` trains over exactly the mask `train` would
// compute at start. The Fisher's samples are the first --fish.samples of a portable shuffle of the
// train split (seeded by --fish.seed, as FISH's shuffled batch-1 loader), sharded over the ranks
// (sparse/fisher.h) and summed; every rank then holds the same Fisher and mask (their hashes are
// checked), and rank 0 writes the file and prints the count per tensor.
#include <torch/torch.h>

#include <chrono>
#include <iostream>

#include "dist/agreement.h"
#include "tasks/glue.h"
#include "tasks/multitask.h"
#include "dist/sampler.h"
#include "launch/cli.h"
#include "launch/method_options.h"
#include "launch/session.h"
#include "launch/task_model.h"
#include "model/device.h"
#include "model/load.h"
#include "model/tokenizer.h"
#include "sparse/methods.h"
#include "util/error.h"
#include "util/log.h"

namespace dt::launch {
namespace {

int run_mask(const po::variables_map& vm) {
  std::string out_path;
  if (vm.count("fish.mask-out")) out_path = vm["fish.mask-out"].as<std::string>();
  else if (vm.count("out")) out_path = vm["out"].as<std::string>();
  else throw_usage_error("deltatune mask: give the output file with --fish.mask-out PATH (or --out PATH)");
  sparse::FishOptions options = sparse::fish_options(method_option_values(vm));
  if (!options.mask_path.empty()) throw_usage_error("deltatune mask computes a mask; --fish.mask is for train");

  SessionOptions session_options;
  session_options.backend = "mpi";
  session_options.log_all_ranks = vm["log-all-ranks"].as<bool>();
  session_options.threads = vm["threads"].as<int>();
  session_options.device = vm["device"].as<std::string>();
  Session session(session_options);
  comm::Communicator& comm = session.cpu_comm();
  const auto start = std::chrono::steady_clock::now();

  // ---- model and data, as `train` has them
  const tasks::TaskList task_list = tasks::parse_task_list(vm["task"].as<std::string>());
  torch::manual_seed(vm["train.seed"].as<uint64_t>());
  TaskModel m = load_task_model(vm["model"].as<std::string>(), vm["tokenizer"].as<std::string>(), task_list);
  model::Backbone& backbone = *m.backbone;
  // The Fisher pass runs where training will (--device, --train.dtype), as train's own does.
  model::backbone_to(backbone, session.device(), model::frozen_dtype(vm["train.dtype"].as<std::string>()));
  std::vector<tasks::EncodedDataset> train;
  int64_t examples = 0;
  for (const tasks::TaskInfo* task : task_list.tasks) {
    train.push_back(tasks::encode_all(
        tasks::read_glue(vm["data"].as<std::string>(), task->name, "train"), *m.tokenizer,
        tasks::encode_options_for(backbone.config(), task->name, vm["train.max-len"].as<int64_t>())));
    examples += train.back().size();
  }
  const peft::TrainingData samples = training_samples(train, task_list, options.seed);
  log::info("deltatune mask: {} ranks, {} ({} train examples of {}), fish({})", comm.size(), backbone.config().name,
            examples, task_list.names(), sparse::describe_fish_options(options));

  // ---- Fisher + top-k, the same on every rank
  const auto fisher_start = std::chrono::steady_clock::now();
  sparse::Mask mask = sparse::compute_fish_mask(backbone, samples.sample, samples.available, &comm, options);
  const double fisher_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - fisher_start).count();
  mask.metadata["task"] = task_list.names();
  dist::agree_or_throw(comm, {{"mask", mask.hash_hex()}});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (comm.rank() == 0) {
    sparse::save_mask(mask, out_path);
    std::cout << fmt::format("# {:<60} {:>10} {:>12} {:>8}\n", "tensor", "kept", "of", "%");
    for (const auto& e : mask.entries) {
      std::cout << fmt::format("  {:<60} {:>10} {:>12} {:>7.3f}%\n", e.name, e.count(), e.numel(),
                               100.0 * e.count() / e.numel());
    }
    const int64_t eligible = std::stoll(mask.metadata.at("eligible_params"));
    std::cout << fmt::format("mask: {} of {} eligible parameters ({:.4f}%) in {} tensors, Fisher of {} samples on {} "
                             "rank(s), {:.1f} s ({:.1f} s Fisher + top-k), hash {} -> {}\n",
                             mask.count(), eligible, 100.0 * mask.count() / eligible, mask.entries.size(),
                             mask.metadata.count("samples") ? mask.metadata.at("samples") : "0", comm.size(), seconds,
                             fisher_seconds, mask.hash_hex(), out_path);
  }
  comm.barrier()->wait();  // the file exists when any rank returns
  return 0;
}

}  // namespace

Subcommand mask_subcommand() {
  Subcommand sub;
  sub.name = "mask";
  sub.summary = "compute a FISH mask (distributed Fisher) and save it";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    add_model_options(desc);
    add_method_options(desc);  // the [fish] section (--method itself is not used)
    add_train_options(desc);   // --train.seed: the same random init as `train` for named configs
    desc.add_options()
        ("train.max-len", po::value<int64_t>()->default_value(64), "tokens per example (as train's)")
        ("fish.mask-out", po::value<std::string>(), "where to write the mask (safetensors)")
        ("out", po::value<std::string>(), "same as --fish.mask-out");
  };
  sub.run = run_mask;
  return sub;
}

}  // namespace dt::launch
