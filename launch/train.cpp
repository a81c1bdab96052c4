// launch/train.cpp — `deltatune train`: the data-parallel fine-tuning loop.
//
// Design note (after llm.c's train_gpt2): one flat loop with visible sections — set-up, data, model +
// method, start-up agreement, then per step: forward, backward + sync, step, log, eval. Every rank
// runs the same code on its shard of the data; the only traffic of a step is GradSync's bucketed
// all-reduce of the method's trainable tensors (plus one float: the loss shown in the log), so the
// bytes on the wire are the trainable bytes whatever the method.
#include <torch/torch.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>

#include "dist/agreement.h"
#include "dist/checkpoint.h"
#include "dist/glue.h"
#include "dist/grad_sync.h"
#include "dist/metrics.h"
#include "dist/optim.h"
#include "dist/sampler.h"
#include "launch/cli.h"
#include "launch/peft_format.h"
#include "launch/session.h"
#include "launch/task_model.h"
#include "model/device.h"
#include "model/load.h"
#include "peft/method.h"
#include "sparse/methods.h"
#include "util/error.h"
#include "util/format.h"
#include "util/log.h"

namespace dt::launch {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void add_train_only_options(po::options_description& desc) {
  desc.add_options()
      ("train.max-len", po::value<int64_t>()->default_value(64), "tokens per example (longer ones are truncated)")
      ("train.eval-batch-size", po::value<int64_t>()->default_value(64), "examples per rank per evaluation batch")
      ("train.eval-max", po::value<int64_t>()->default_value(0), "evaluate on the first N dev examples (0: all)")
      ("train.optimizer", po::value<std::string>()->default_value("adamw"), "adamw | adafactor")
      ("train.weight-decay", po::value<double>()->default_value(0.0), "decoupled weight decay")
      ("train.schedule", po::value<std::string>()->default_value("linear"), "linear | cosine | constant (after warmup)")
      ("train.warmup-steps", po::value<int64_t>()->default_value(0), "linear warmup steps")
      ("train.clip", po::value<double>()->default_value(1.0), "clip the global gradient L2 norm (0: off)")
      ("train.pad-to", po::value<int64_t>()->default_value(0),
       "pad every training batch to N tokens (0: to its longest row); fixed shapes for benchmarks and GPUs")
      ("dist.check-finite", po::bool_switch(), "check gradients for NaN/Inf before all-reduce (names rank and tensor)");
}

std::string shapes_text(const std::vector<peft::Trainable>& trainables) {
  std::string out;
  for (const auto& t : trainables) {
    out += t.name + ":";
    for (auto s : t.tensor.sizes()) out += std::to_string(s) + ",";
    out += std::string(c10::toString(t.tensor.scalar_type())) + ";";
  }
  return out;
}

int run_train(const po::variables_map& vm) {
  // ---- set-up: ranks, threads, the resolved config printed once --------------------------------
  const std::string out_dir = vm.count("out") ? vm["out"].as<std::string>() : "";
  const int64_t ckpt_every = vm["ckpt.every"].as<int64_t>(), ckpt_keep = vm["ckpt.keep"].as<int64_t>();
  dist::install_preemption_handlers();  // SIGUSR1/SIGTERM only set a flag, agreed at step boundaries
  SessionOptions session_options;
  session_options.backend = vm["dist.backend"].as<std::string>();
  session_options.log_all_ranks = vm["log-all-ranks"].as<bool>();
  session_options.threads = vm["threads"].as<int>();
  session_options.device = vm["device"].as<std::string>();
  Session session(session_options);
  const c10::Device device = session.device();
  comm::Communicator& comm = session.comm();
  const int rank = comm.rank(), world = comm.size();

  po::options_description desc;
  train_subcommand().add_options(desc);
  const std::string resolved_config = render_config(desc, vm);
  log::info("deltatune train: {} ranks, backend {}, device {}, {} torch thread(s) per rank", world,
            comm.backend_name(), device.str(), session.threads());
  log::info("placement: {}", describe_hosts(gather_placement(session.cpu_comm())));
  log::info("resolved config:\n{}", resolved_config);

  const auto frozen_dtype = model::frozen_dtype(vm["train.dtype"].as<std::string>());  // before any loading
  const auto seed = vm["train.seed"].as<uint64_t>();
  const auto steps = vm["train.steps"].as<int64_t>();
  const auto batch_size = vm["train.batch-size"].as<int64_t>();
  const auto accum = vm["train.accum"].as<int64_t>();
  const auto eval_every = vm["train.eval-every"].as<int64_t>();
  if (steps <= 0 || batch_size <= 0 || accum <= 0) {
    throw_usage_error("--train.steps, --train.batch-size and --train.accum must be positive");
  }

  // ---- model, data, method ------------------------------------------------------------------------------
  const dist::TaskInfo& task = dist::glue_task(vm["task"].as<std::string>());
  torch::manual_seed(seed);  // the same initial trainable values on every rank (checked below)
  TaskModel task_model = load_task_model(vm["model"].as<std::string>(), vm["tokenizer"].as<std::string>(), task);
  auto& backbone = task_model.backbone;
  auto& tokenizer = task_model.tokenizer;
  const model::ModelConfig& config = backbone->config();
  // The frozen weights go to this rank's device once (mapped from the file, then copied), cast to
  // --train.dtype bf16 if asked; the Fisher pass and the methods' set-up then run where they will train.
  if (frozen_dtype && config.arch != model::Arch::T5) {
    throw_usage_error("--train.dtype bf16 is implemented for T5 backbones (norms, softmax and loss in fp32); "
                      "use fp32 for " + config.name);
  }
  model::backbone_to(*backbone, device, frozen_dtype);
  // ---- data: every rank reads and tokenizes; the sampler gives each its shard ----------------------
  auto t0 = Clock::now();
  const auto encode = dist::encode_options_for(config, task.name, vm["train.max-len"].as<int64_t>());
  const auto data_dir = vm["data"].as<std::string>();
  const dist::EncodedDataset train_data = dist::encode_all(dist::read_glue(data_dir, task.name, "train"), *tokenizer, encode);
  const dist::EncodedDataset dev_data =
      load_dev_set(data_dir, task, *tokenizer, encode, vm["train.eval-max"].as<int64_t>());
  log::info("data: {} train / {} dev examples of {}, tokenized in {:.2f} s", train_data.size(), dev_data.size(),
            task.name, seconds_since(t0));
  const peft::MethodSet methods = peft::MethodSet::from_options(vm);
  // FISH's Fisher samples: training examples in an order drawn from `seed` (--fish.seed at start,
  // shifted by the step at each --fish.refresh-every).
  auto fisher_samples = [&train_data](uint64_t seed) -> sparse::SampleFn {
    auto order = std::make_shared<std::vector<int64_t>>(dist::portable_permutation(train_data.size(), seed));
    return [&train_data, order](const std::vector<int64_t>& ids) {
      std::vector<int64_t> rows;
      for (int64_t i : ids) rows.push_back(order->at(i));
      return dist::collate(train_data, rows);
    };
  };
  std::vector<sparse::FishMethod*> refreshed_fish;  // FISH methods whose mask moves during training
  for (const auto& m : methods.methods()) {
    auto* fish = dynamic_cast<sparse::FishMethod*>(m.get());
    if (fish && fish->options().refresh_every > 0) refreshed_fish.push_back(fish);
  }
  if (!refreshed_fish.empty() && vm.count("resume")) {
    // The mask moved during the run being resumed: continue with the checkpoint's mask. Rank 0 chooses
    // the checkpoint and every rank reads that one file, so all ranks restore the same mask (the
    // start-up agreement then compares its hash, and the resume below validates the file).
    if (auto point = dist::resume_checkpoint(session.cpu_comm(), vm["resume"].as<std::string>(), out_dir, nullptr)) {
      sparse::restore_indices(methods, stored_indices(point->state.indices), config);
    }
  }
  if (sparse::needs_data(methods)) {
    // FISH without --fish.mask: the Fisher mask is computed now, over training samples sharded
    // across ranks (the same computation as `deltatune mask`), before the method attaches.
    sparse::prepare_fish(methods, *backbone, fisher_samples(vm["fish.seed"].as<uint64_t>()), train_data.size(), comm);
  }
  const std::vector<peft::Trainable> trainables = methods.apply(*backbone);
  methods.to(device, trainables);  // created on the host (same initial values on any device), moved once
  if (vm.count("init-from")) {
    // Every rank reads the adapter (the start-up agreement below then checks they hold the same values).
    const PeftLayout layout = peft_layout(methods, *backbone, trainables, vm, vm["model"].as<std::string>());
    const int64_t values = load_peft_adapter(vm["init-from"].as<std::string>(), layout, trainables);
    log::info("init-from {}: {} values of {} tensors from the HF PEFT {} adapter", vm["init-from"].as<std::string>(),
              with_commas(values), layout.tensors.size(), layout.config["peft_type"].get<std::string>());
  }
  int64_t trainable_params = 0, backbone_params = 0;
  for (const auto& t : trainables) trainable_params += t.tensor.numel();
  std::vector<at::Tensor> frozen;
  for (const auto& [name, tensor] : backbone->named_parameters()) {
    backbone_params += tensor.numel();
    if (!tensor.requires_grad()) frozen.push_back(tensor);
  }
  // "all params" counts the backbone and every tensor a method added (as HF PEFT counts them).
  int64_t added_params = 0;
  for (const auto& t : trainables) {
    bool in_backbone = false;
    for (const auto& [name, tensor] : backbone->named_parameters()) in_backbone |= name == t.name;
    if (!in_backbone) added_params += t.tensor.numel();
  }
  log::info("{}", peft::accounting_line(trainable_params, backbone_params + added_params));
  {
    std::map<std::string, int64_t> per_method;
    for (const auto& t : trainables) per_method[t.method] += t.tensor.numel();
    for (const auto& [method, n] : per_method) log::info("  {}: {} trainable", method, n);
  }

  // ---- start-up agreement: same config, backbone, trainable set and initial values everywhere -----
  std::vector<at::Tensor> trainable_tensors;
  dist::NamedTensors named_trainables;
  for (const auto& t : trainables) {
    trainable_tensors.push_back(t.tensor);
    named_trainables.emplace_back(t.name, t.tensor);
  }
  const std::string frozen_hash = dist::hash_hex(dist::hash_tensors(frozen));
  dist::agree_or_throw(session.cpu_comm(),
                       {{"config", resolved_config},
                        {"backbone", config.name + ":" + frozen_hash},
                        {"method", methods.describe()},
                        {"trainable tensors", shapes_text(trainables)},
                        {"initial trainable values", dist::hash_hex(dist::hash_tensors(trainable_tensors))}});

  dist::SamplerOptions sampler_options;
  sampler_options.seed = seed;
  dist::DistributedSampler sampler(train_data.size(), rank, world, sampler_options);

  // ---- GradSync + optimizer --------------------------------------------------------------------------
  dist::GradSyncOptions sync_options;
  sync_options.bucket_cap_mb = vm["dist.bucket-mb"].as<double>();
  // DDP's small first bucket (1 MiB) starts communication early; never larger than the cap itself.
  sync_options.first_bucket_cap_mb = std::min(1.0, sync_options.bucket_cap_mb);
  sync_options.compress = dist::parse_compression(vm["dist.compress"].as<std::string>());
  sync_options.check_finite = vm["dist.check-finite"].as<bool>();
  dist::GradSync grad_sync(comm, named_trainables, sync_options);
  for (const auto& m : methods.methods()) {
    // --fish.dense-sync: the DDP-style baseline, same values, the masked tensors' whole size on the wire.
    auto* fish = dynamic_cast<sparse::FishMethod*>(m.get());
    if (fish == nullptr || !fish->options().dense_sync) continue;
    if (sync_options.compress != dist::Compression::None) {
      throw_usage_error("--fish.dense-sync all-reduces fp32 tensors: it excludes --dist.compress");
    }
    size_t index = 0;
    while (index < named_trainables.size() && named_trainables[index].first != "fish.values") ++index;
    DT_CHECK(index < named_trainables.size(), "--fish.dense-sync: no fish.values among the trainables");
    auto [positions, numel] = fish->dense_positions(config);
    grad_sync.set_comm_hook(dist::make_dense_scatter_hook({{index, dist::DenseScatter{positions, numel}}}));
    log::info("fish.dense-sync: fish.values ({} values) travels inside its eligible tensors whole: {} floats a step",
              with_commas(positions.numel()), with_commas(numel));
  }
  log::info("gradsync: {} bucket(s), {} bytes of gradients per step", grad_sync.buckets().size(), grad_sync.grad_bytes());
  dist::OptimizerOptions optimizer_options;
  optimizer_options.name = vm["train.optimizer"].as<std::string>();
  optimizer_options.adamw.weight_decay = vm["train.weight-decay"].as<double>();
  optimizer_options.adafactor.weight_decay = optimizer_options.adamw.weight_decay;
  auto optimizer = dist::make_optimizer(named_trainables, optimizer_options);
  dist::LrSchedule schedule;
  schedule.kind = dist::parse_lr_schedule(vm["train.schedule"].as<std::string>());
  schedule.base_lr = vm["train.lr"].as<double>();
  schedule.warmup_steps = vm["train.warmup-steps"].as<int64_t>();
  schedule.total_steps = steps;
  const double clip = vm["train.clip"].as<double>();

  // ---- checkpoint identity + resume ------------------------------------------------------------------
  dist::CheckpointState identity;  // what a checkpoint must match to be resumed here
  identity.backbone.name = config.name;
  identity.backbone.config = nlohmann::json(model::config_metadata(config)).dump();
  const std::string model_arg = vm["model"].as<std::string>();
  // Hashing a multi-GB weights file takes tens of seconds: only when checkpoints are written or read.
  const bool checkpointing = !out_dir.empty() || vm.count("resume");
  if (checkpointing && rank == 0 && std::filesystem::is_regular_file(model_arg)) {
    identity.backbone.weights_sha256 = dist::sha256_file(model_arg);
  }
  identity.backbone.tensors_hash = frozen_hash;
  identity.method = methods.describe();
  identity.optimizer = optimizer->name();
  identity.config_ini = resolved_config;
  identity.trainables = named_trainables;
  // Sparse methods' fixed indices travel with the values (and a resume refuses another mask).
  identity.indices = checkpoint_indices(methods);
  int64_t first_step = 1;
  if (vm.count("resume")) {
    if (auto point = dist::resume_checkpoint(session.cpu_comm(), vm["resume"].as<std::string>(), out_dir, &identity)) {
      dist::apply_training_state(point->state, named_trainables, *optimizer, sampler, rank);
      first_step = point->state.step + 1;
      log::info("resumed from {} (step {})", point->path, point->state.step);
    }
  }
  auto save_checkpoint = [&](int64_t step, double lr) {
    dist::CheckpointState s = dist::capture_training_state(step, named_trainables, *optimizer, sampler);
    s.lr = lr;
    s.schedule = fmt::format("{} base_lr={} warmup={} total={}", vm["train.schedule"].as<std::string>(),
                             schedule.base_lr, schedule.warmup_steps, schedule.total_steps);
    s.config_ini = identity.config_ini;
    s.method = identity.method;
    s.backbone = identity.backbone;
    s.indices = identity.indices;
    log::info("checkpoint {}", dist::save_checkpoint(session.cpu_comm(), out_dir, std::move(s), ckpt_keep));
  };

  std::ofstream metrics;
  if (vm.count("metrics") && rank == 0) {
    metrics.open(vm["metrics"].as<std::string>(), std::ios::app);
    if (!metrics) throw_usage_error("--metrics: cannot write '" + vm["metrics"].as<std::string>() + "'");
  }
  auto write_metrics = [&](const nlohmann::json& j) {
    if (metrics.is_open()) metrics << j.dump() << "\n" << std::flush;
  };
  // A bar only for a person at a terminal: mpirun gives ranks a pty for stdout but a pipe for stderr,
  // so under a launcher (and in batch logs) plain lines are written instead.
  const bool progress_bar = rank == 0 && isatty(STDOUT_FILENO) && isatty(STDERR_FILENO);
  const int64_t eval_batch = vm["train.eval-batch-size"].as<int64_t>();
  const int64_t pad_to = vm["train.pad-to"].as<int64_t>();

  // ---- the loop ---------------------------------------------------------------------------------
  backbone->set_training(true);
  double last_loss = 0;
  model::reset_device_peak(device);
  for (int64_t step = first_step; step <= steps; ++step) {
    const auto step_start = Clock::now();
    // forward + backward; GradSync all-reduces buckets as their gradients become ready, on the last
    // micro-step only (earlier ones accumulate locally). The loss stays on the device until the step
    // is queued: reading it is the step's one host sync.
    at::Tensor loss_sum;
    for (int64_t micro = 0; micro < accum; ++micro) {
      model::Batch batch = model::batch_to(
          dist::collate(train_data, sampler.next_batch(batch_size), pad_to), device);
      grad_sync.set_sync(micro == accum - 1);
      auto out = methods.forward(*backbone, batch);
      auto loss = out.loss / static_cast<double>(accum);
      loss.backward();
      loss_sum = loss_sum.defined() ? loss_sum + loss.detach() : loss.detach();
    }
    grad_sync.finish();
    const dist::GradSyncStats stats = grad_sync.last_stats();

    // step: gradients are identical on every rank now, so clipping needs no communication.
    const double grad_norm = clip > 0 ? dist::clip_grad_norm(named_trainables, clip) : 0.0;
    const double lr = schedule.lr(step - 1);  // HF's convention: steps already taken
    optimizer->step(lr);
    grad_sync.zero_grad();

    // FISH --fish.refresh-every: a new mask of the same count; values and optimizer state follow
    // the indices both masks hold, and checkpoints from now on store the new indices.
    for (auto* fish : refreshed_fish) {
      if (step % fish->options().refresh_every != 0 || step == steps) continue;
      const auto carry = fish->refresh(*backbone, fisher_samples(vm["fish.seed"].as<uint64_t>() + step),
                                       train_data.size(), comm);
      optimizer->permute_state("fish.values", carry);
      identity.indices = checkpoint_indices(methods);
      identity.method = methods.describe();  // its mask hash: a resume compares it
    }

    // log: the loss averaged over ranks (one float; not counted in bytes_allreduced).
    // The preemption flag rides on the loss all-reduce: > 0 when any rank got SIGUSR1/SIGTERM.
    at::Tensor loss_all = at::zeros({2}, at::kDouble);
    loss_all[0] = loss_sum.item<double>();
    loss_all[1] = dist::preemption_requested() ? 1.0 : 0.0;
    session.cpu_comm().all_reduce(loss_all, {comm::ReduceOp::Average})->wait();
    last_loss = loss_all[0].item<double>();
    const bool preempted = loss_all[1].item<double>() > 0;
    const double step_time = seconds_since(step_start);
    nlohmann::json record = {{"step", step}, {"loss", last_loss}, {"lr", lr}, {"step_time_s", step_time},
                             {"bytes_allreduced", stats.bytes}, {"collectives", stats.collectives},
                             {"exposed_comm_s", stats.exposed_comm_s}, {"grad_norm", grad_norm}};
    // The most GPU memory the caching allocator held since training began (weights included).
    if (device.is_cuda()) record["device_peak_bytes"] = model::device_peak_bytes(device);
    write_metrics(record);
    if (progress_bar) {
      const int width = 30, done = static_cast<int>(width * step / steps);
      std::printf("\r[%.*s%*s] step %lld/%lld loss %.4f lr %.2e %.0f ms", done,
                  "==============================", width - done, "", static_cast<long long>(step),
                  static_cast<long long>(steps), last_loss, lr, step_time * 1e3);
      std::fflush(stdout);
    } else {
      log::info("step {:5d}/{} | loss {:.6f} | lr {:.3e} | {:.1f} ms | allreduced {} B in {} collective(s), "
                "exposed {:.2f} ms", step, steps, last_loss, lr, step_time * 1e3, stats.bytes, stats.collectives,
                stats.exposed_comm_s * 1e3);
    }

    // eval at intervals and at the end.
    if ((eval_every > 0 && step % eval_every == 0) || step == steps) {
      const Evaluation e = evaluate(methods, *backbone, dev_data, task.num_labels, eval_batch, comm);
      if (progress_bar) std::printf("\n");
      write_metrics(eval_record(step, e, task));
      log::info("eval step {}: dev accuracy {:.4f}{} on {} examples ({:.1f} s)", step, e.metrics.accuracy,
                task.metric == dist::MetricKind::Mcc ? fmt::format(", mcc {:.4f}", e.metrics.mcc) : "",
                e.metrics.count, e.seconds);
    }

    // checkpoint: every --ckpt.every steps, at the end, and on preemption (then exit 75).
    if (!out_dir.empty() && (preempted || step == steps || (ckpt_every > 0 && step % ckpt_every == 0))) {
      save_checkpoint(step, lr);
    }
    if (preempted) {
      log::info("preempted at step {}: {}, exiting {}", step,
                out_dir.empty() ? "no --out, so nothing was saved" : "checkpoint written", dist::kPreemptedExitCode);
      return dist::kPreemptedExitCode;
    }
  }
  // A fingerprint of the learned values, comparable across world sizes (tests use it).
  double l2 = 0, sum = 0;
  for (const auto& t : trainables) {
    l2 += t.tensor.detach().to(at::kDouble).pow(2).sum().item<double>();
    sum += t.tensor.detach().to(at::kDouble).sum().item<double>();
  }
  write_metrics({{"step", steps}, {"final", true}, {"trainable_l2", std::sqrt(l2)}, {"trainable_sum", sum}});
  log::info("done: final loss {:.6f}, trainable values L2 {:.6f}", last_loss, std::sqrt(l2));
  return 0;
}

}  // namespace

Subcommand train_subcommand() {
  Subcommand sub;
  sub.name = "train";
  sub.summary = "data-parallel fine-tuning (under mpirun/srun, or as one process)";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    add_model_options(desc);
    add_method_options(desc);
    add_train_options(desc);
    add_dist_options(desc);
    add_checkpoint_options(desc);
    add_train_only_options(desc);
  };
  sub.run = run_train;
  return sub;
}

}  // namespace dt::launch
