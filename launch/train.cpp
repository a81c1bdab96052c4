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
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "dist/agreement.h"
#include "dist/checkpoint.h"
#include "tasks/glue.h"
#include "tasks/multitask.h"
#include "dist/grad_sync.h"
#include "dist/metrics.h"
#include "dist/optim.h"
#include "dist/sampler.h"
#include "launch/cli.h"
#include "launch/method_options.h"
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
      ("dist.check-finite", po::bool_switch(), "check gradients for NaN/Inf before all-reduce (names rank and tensor)")
      ("multitask.mix", po::value<std::string>()->default_value("proportional"),
       "with several --task: which task each batch comes from, proportional (to the training-set sizes, capped by "
       "--multitask.cap) | temperature (size^(1/T))")
      ("multitask.temperature", po::value<double>()->default_value(2.0), "T of --multitask.mix temperature")
      ("multitask.cap", po::value<int64_t>()->default_value(0),
       "--multitask.mix proportional: count at most N examples of a task (0: no cap; T5's K)")
      ("multitask.batch", po::value<std::string>()->default_value("task"),
       "with several --task: task (every batch from one task) | mixed (each row's task drawn; a batch mixes tasks)");
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

// ---- the steps of a run, in the order run_train calls them ---------------------------------------

// The options the loop reads, read and checked once.
struct TrainSettings {
  std::string out_dir;  // --out: checkpoints ("" : none)
  int64_t ckpt_every = 0, ckpt_keep = 0;
  uint64_t seed = 0;
  int64_t steps = 0, batch_size = 0, accum = 0, eval_every = 0, eval_batch = 0, pad_to = 0;
  double clip = 0;
  std::string model_arg, schedule_name;
  uint64_t fish_seed = 0;
};

TrainSettings read_settings(const po::variables_map& vm) {
  TrainSettings s;
  s.out_dir = vm.count("out") ? vm["out"].as<std::string>() : "";
  s.ckpt_every = vm["ckpt.every"].as<int64_t>();
  s.ckpt_keep = vm["ckpt.keep"].as<int64_t>();
  s.seed = vm["train.seed"].as<uint64_t>();
  s.steps = vm["train.steps"].as<int64_t>();
  s.batch_size = vm["train.batch-size"].as<int64_t>();
  s.accum = vm["train.accum"].as<int64_t>();
  s.eval_every = vm["train.eval-every"].as<int64_t>();
  s.eval_batch = vm["train.eval-batch-size"].as<int64_t>();
  s.pad_to = vm["train.pad-to"].as<int64_t>();
  s.clip = vm["train.clip"].as<double>();
  s.model_arg = vm["model"].as<std::string>();
  s.schedule_name = vm["train.schedule"].as<std::string>();
  s.fish_seed = vm.count("fish.seed") ? vm["fish.seed"].as<uint64_t>() : 0;
  if (s.steps <= 0 || s.batch_size <= 0 || s.accum <= 0) {
    throw_usage_error("--train.steps, --train.batch-size and --train.accum must be positive");
  }
  return s;
}

// Every rank reads and tokenizes both splits of every task; the sampler later gives each rank its shard.
struct TrainData {
  std::vector<tasks::EncodedDataset> train, dev;  // per task, in --task order
};

TrainData load_data(const po::variables_map& vm, const tasks::TaskList& task_list, const TaskModel& m) {
  const auto data_dir = vm["data"].as<std::string>();
  TrainData data;
  for (const tasks::TaskInfo* task : task_list.tasks) {
    const auto t0 = Clock::now();
    const auto encode = tasks::encode_options_for(m.backbone->config(), task->name, vm["train.max-len"].as<int64_t>());
    data.train.push_back(tasks::encode_all(tasks::read_glue(data_dir, task->name, "train"), *m.tokenizer, encode));
    data.dev.push_back(load_dev_set(data_dir, *task, *m.tokenizer, encode, vm["train.eval-max"].as<int64_t>()));
    log::info("data: {} train / {} dev examples of {}, tokenized in {:.2f} s", data.train.back().size(),
              data.dev.back().size(), task->name, seconds_since(t0));
  }
  return data;
}

// Attaches the methods: the indices a resumed run had moved to, or those data-dependent methods compute
// now (FISH's Fisher mask, sharded across ranks as `deltatune mask` does), then apply, the move to the
// device and --init-from's adapter values.
std::vector<peft::Trainable> attach_methods(const po::variables_map& vm, const TrainSettings& settings,
                                            const peft::MethodSet& methods, model::Backbone& backbone,
                                            const TrainData& data, const tasks::TaskList& task_list,
                                            Session& session) {
  if (methods.refreshes_indices() && vm.count("resume")) {
    // The mask moved during the run being resumed: continue with the checkpoint's mask. Rank 0 chooses
    // the checkpoint and every rank reads that one file, so all ranks restore the same mask (the
    // start-up agreement then compares its hash, and the resume validates the file).
    if (auto point = dist::resume_checkpoint(session.cpu_comm(), vm["resume"].as<std::string>(), settings.out_dir,
                                             nullptr)) {
      sparse::restore_indices(methods, stored_indices(point->state.indices), backbone.config());
    }
  }
  if (methods.needs_prepare()) {
    methods.prepare(backbone, training_samples(data.train, task_list, settings.fish_seed), session.comm());
  }
  const std::vector<peft::Trainable> trainables = methods.apply(backbone);
  methods.to(session.device(), trainables);  // created on the host (same initial values on any device), moved once
  if (vm.count("init-from")) {
    // Every rank reads the adapter (the start-up agreement then checks they hold the same values).
    const PeftLayout layout = peft_layout(methods, backbone, trainables, vm, settings.model_arg);
    const int64_t values = load_peft_adapter(vm["init-from"].as<std::string>(), layout, trainables);
    log::info("init-from {}: {} values of {} tensors from the HF PEFT {} adapter", vm["init-from"].as<std::string>(),
              with_commas(values), layout.tensors.size(), layout.config["peft_type"].get<std::string>());
  }
  return trainables;
}

// HF PEFT's accounting line; "all params" counts the backbone and every tensor a method added.
void log_parameter_counts(const model::Backbone& backbone, const std::vector<peft::Trainable>& trainables) {
  int64_t trainable_params = 0, backbone_params = 0, added_params = 0;
  std::set<std::string> backbone_names;
  for (const auto& [name, tensor] : backbone.named_parameters()) {
    backbone_params += tensor.numel();
    backbone_names.insert(name);
  }
  std::map<std::string, int64_t> per_method;
  for (const auto& t : trainables) {
    trainable_params += t.tensor.numel();
    if (!backbone_names.count(t.name)) added_params += t.tensor.numel();
    per_method[t.method] += t.tensor.numel();
  }
  log::info("{}", peft::accounting_line(trainable_params, backbone_params + added_params));
  for (const auto& [method, n] : per_method) log::info("  {}: {} trainable", method, n);
}

// Every rank must hold the same config, backbone, trainable set and initial values; a difference
// names the item and the ranks.
void agree_at_start_up(Session& session, const std::string& resolved_config, const model::ModelConfig& config,
                       const FrozenIdentity& frozen, const peft::MethodSet& methods,
                       const std::vector<peft::Trainable>& trainables) {
  std::vector<at::Tensor> values;
  for (const auto& t : trainables) values.push_back(t.tensor);
  dist::agree_or_throw(session.cpu_comm(),
                       {{"config", resolved_config},
                        {"backbone", frozen.agreed},
                        {"method", methods.describe()},
                        {"trainable tensors", shapes_text(trainables)},
                        {"initial trainable values", dist::hash_hex(dist::hash_tensors(values))}});
}

// Buckets of the trainable gradients, all-reduced as backward fills them; a method may ask for its
// DDP-style dense baseline (--fish.dense-sync: the same values, the indexed tensors' whole size on the wire).
std::unique_ptr<dist::GradSync> make_grad_sync(const po::variables_map& vm, comm::Communicator& comm,
                                               const dist::NamedTensors& named_trainables,
                                               const peft::MethodSet& methods, const model::ModelConfig& config) {
  dist::GradSyncOptions options;
  options.bucket_cap_mb = vm["dist.bucket-mb"].as<double>();
  // DDP's small first bucket (1 MiB) starts communication early; never larger than the cap itself.
  options.first_bucket_cap_mb = std::min(1.0, options.bucket_cap_mb);
  options.compress = dist::parse_compression(vm["dist.compress"].as<std::string>());
  options.check_finite = vm["dist.check-finite"].as<bool>();
  auto grad_sync = std::make_unique<dist::GradSync>(comm, named_trainables, options);
  for (const auto& m : methods.methods()) {
    const auto dense = m->dense_sync(config);
    if (!dense) continue;
    if (options.compress != dist::Compression::None) {
      throw_usage_error("--" + m->name() + ".dense-sync all-reduces fp32 tensors: it excludes --dist.compress");
    }
    size_t index = 0;
    while (index < named_trainables.size() && named_trainables[index].first != dense->trainable) ++index;
    DT_CHECK(index < named_trainables.size(), "dense sync: no " + dense->trainable + " among the trainables");
    grad_sync->set_comm_hook(dist::make_dense_scatter_hook({{index, dist::DenseScatter{dense->positions, dense->numel}}}));
    log::info("{}.dense-sync: {} ({} values) travels inside the tensors it indexes, whole: {} floats a step",
              m->name(), dense->trainable, with_commas(dense->positions.numel()), with_commas(dense->numel));
  }
  log::info("gradsync: {} bucket(s), {} bytes of gradients per step", grad_sync->buckets().size(),
            grad_sync->grad_bytes());
  return grad_sync;
}

std::unique_ptr<dist::Optimizer> optimizer_for(const po::variables_map& vm, const dist::NamedTensors& named_trainables) {
  dist::OptimizerOptions options;
  options.name = vm["train.optimizer"].as<std::string>();
  options.adamw.weight_decay = vm["train.weight-decay"].as<double>();
  options.adafactor.weight_decay = options.adamw.weight_decay;
  return dist::make_optimizer(named_trainables, options);
}

dist::LrSchedule lr_schedule(const po::variables_map& vm, const TrainSettings& settings) {
  dist::LrSchedule schedule;
  schedule.kind = dist::parse_lr_schedule(settings.schedule_name);
  schedule.base_lr = vm["train.lr"].as<double>();
  schedule.warmup_steps = vm["train.warmup-steps"].as<int64_t>();
  schedule.total_steps = settings.steps;
  return schedule;
}

// What a checkpoint must match to be resumed here, and what each checkpoint of this run records.
dist::CheckpointState checkpoint_identity(const model::ModelConfig& config, const FrozenIdentity& frozen,
                                          const peft::MethodSet& methods, const dist::Optimizer& optimizer,
                                          const std::string& resolved_config,
                                          const dist::NamedTensors& named_trainables) {
  dist::CheckpointState identity;
  identity.backbone.name = config.name;
  identity.backbone.config = nlohmann::json(model::config_metadata(config)).dump();
  // The weights file's sha256 (cached, see identify_frozen), or for a named config its frozen tensors' hash.
  identity.backbone.weights_sha256 = frozen.weights_sha256;
  identity.backbone.tensors_hash = frozen.tensors_hash;
  identity.method = methods.describe();
  identity.optimizer = optimizer.name();
  identity.config_ini = resolved_config;
  identity.trainables = named_trainables;
  // Sparse methods' fixed indices travel with the values (and a resume refuses another mask).
  identity.indices = checkpoint_indices(methods);
  return identity;
}

// --metrics (rank 0, JSON lines) and the console: a bar for a person at a terminal, plain lines under a
// launcher and in batch logs (mpirun gives ranks a pty for stdout but a pipe for stderr).
class StepLog {
 public:
  StepLog(const po::variables_map& vm, int rank, int64_t steps)
      : steps_(steps), progress_bar_(rank == 0 && isatty(STDOUT_FILENO) && isatty(STDERR_FILENO)) {
    if (vm.count("metrics") && rank == 0) {
      metrics_.open(vm["metrics"].as<std::string>(), std::ios::app);
      if (!metrics_) throw_usage_error("--metrics: cannot write '" + vm["metrics"].as<std::string>() + "'");
    }
  }
  void write(const nlohmann::json& record) {
    if (metrics_.is_open()) metrics_ << record.dump() << "\n" << std::flush;
  }
  void step(int64_t step, double loss, double lr, double step_time, const dist::GradSyncStats& stats) {
    if (progress_bar_) {
      const int width = 30, done = static_cast<int>(width * step / steps_);
      std::printf("\r[%.*s%*s] step %lld/%lld loss %.4f lr %.2e %.0f ms", done, "==============================",
                  width - done, "", static_cast<long long>(step), static_cast<long long>(steps_), loss, lr,
                  step_time * 1e3);
      std::fflush(stdout);
    } else {
      log::info("step {:5d}/{} | loss {:.6f} | lr {:.3e} | {:.1f} ms | allreduced {} B in {} collective(s), "
                "exposed {:.2f} ms", step, steps_, loss, lr, step_time * 1e3, stats.bytes, stats.collectives,
                stats.exposed_comm_s * 1e3);
    }
  }
  void end_bar_line() {
    if (progress_bar_) std::printf("\n");
  }

 private:
  std::ofstream metrics_;
  int64_t steps_;
  bool progress_bar_;
};

// Forward + backward of --train.accum micro-batches; GradSync all-reduces buckets as their gradients
// become ready, on the last micro-step only (earlier ones accumulate locally). The loss stays on the
// device: reading it later is the step's one host sync.
at::Tensor forward_backward(const TrainSettings& settings, const peft::MethodSet& methods, model::Backbone& backbone,
                            const TrainData& data, const tasks::TaskList& task_list, tasks::MultiTaskSampler& sampler,
                            dist::GradSync& grad_sync, const c10::Device& device) {
  at::Tensor loss_sum;
  for (int64_t micro = 0; micro < settings.accum; ++micro) {
    grad_sync.set_sync(micro == settings.accum - 1);
    // One part per task in the batch (one part unless --multitask.batch mixed): each is scored by its own
    // head, the loss is their row-weighted mean, and one backward lets GradSync all-reduce once.
    const std::vector<tasks::MultiTaskSampler::Part> parts = sampler.next_batch(settings.batch_size);
    size_t rows = 0;
    for (const auto& part : parts) rows += part.rows.size();
    at::Tensor loss;
    for (const auto& part : parts) {
      model::Batch host = tasks::collate(data.train[part.task], part.rows, settings.pad_to);
      tasks::set_task_head(host, task_list, part.task);
      const model::Batch batch = model::batch_to(host, device);
      at::Tensor part_loss = methods.forward(backbone, batch).loss;
      if (parts.size() > 1) part_loss = part_loss * (static_cast<double>(part.rows.size()) / static_cast<double>(rows));
      part_loss = part_loss / static_cast<double>(settings.accum);
      loss = loss.defined() ? loss + part_loss : part_loss;
    }
    loss.backward();
    loss_sum = loss_sum.defined() ? loss_sum + loss.detach() : loss.detach();
  }
  grad_sync.finish();
  return loss_sum;
}

// The loss averaged over ranks (one float; not counted in bytes_allreduced). The preemption flag rides on
// the same all-reduce: set when any rank got SIGUSR1/SIGTERM.
struct LossAndPreemption {
  double loss = 0;
  bool preempted = false;
};

LossAndPreemption average_loss(Session& session, const at::Tensor& loss_sum) {
  at::Tensor both = at::zeros({2}, at::kDouble);
  both[0] = loss_sum.item<double>();
  both[1] = dist::preemption_requested() ? 1.0 : 0.0;
  session.cpu_comm().all_reduce(both, {comm::ReduceOp::Average})->wait();
  return {both[0].item<double>(), both[1].item<double>() > 0};
}

// Which task each batch comes from and which rows (tasks/multitask.h); with one task, the single-task
// DistributedSampler itself (seeded with --train.seed).
tasks::MultiTaskSampler make_sampler(const po::variables_map& vm, const TrainSettings& settings, const TrainData& data,
                                     const tasks::TaskList& task_list, int rank, int world) {
  tasks::MixOptions mix;
  mix.kind = tasks::parse_mix_kind(vm["multitask.mix"].as<std::string>());
  mix.temperature = vm["multitask.temperature"].as<double>();
  mix.cap = vm["multitask.cap"].as<int64_t>();
  mix.batch = tasks::parse_batch_kind(vm["multitask.batch"].as<std::string>());
  dist::SamplerOptions options;
  options.seed = settings.seed;
  std::vector<int64_t> sizes;
  for (const auto& train : data.train) sizes.push_back(train.size());
  tasks::MultiTaskSampler sampler(sizes, rank, world, mix, options);
  if (task_list.multi()) {
    std::string rates;
    for (size_t t = 0; t < sizes.size(); ++t) {
      rates += fmt::format("{}{} {:.3f}", t ? ", " : "", task_list.tasks[t]->name, sampler.rates()[t]);
    }
    log::info("multitask: {}, {} mixing: {}",
              mix.batch == tasks::BatchKind::Mixed ? "a task per row (mixed batches)" : "one task per batch",
              vm["multitask.mix"].as<std::string>(), rates);
  }
  return sampler;
}

// A fingerprint of the learned values, comparable across world sizes (tests use it).
nlohmann::json final_record(int64_t steps, const std::vector<peft::Trainable>& trainables) {
  double l2 = 0, sum = 0;
  for (const auto& t : trainables) {
    l2 += t.tensor.detach().to(at::kDouble).pow(2).sum().item<double>();
    sum += t.tensor.detach().to(at::kDouble).sum().item<double>();
  }
  return {{"step", steps}, {"final", true}, {"trainable_l2", std::sqrt(l2)}, {"trainable_sum", sum}};
}

int run_train(const po::variables_map& vm) {
  // ---- set-up: ranks, threads, the resolved config printed once --------------------------------
  const TrainSettings settings = read_settings(vm);
  dist::install_preemption_handlers();  // SIGUSR1/SIGTERM only set a flag, agreed at step boundaries
  Session session(session_options(vm));
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

  // ---- model, data, methods -------------------------------------------------------------------------
  const tasks::TaskList task_list = tasks::parse_task_list(vm["task"].as<std::string>());
  TaskModel task_model = load_model(vm, task_list, device, settings.seed);
  model::Backbone& backbone = *task_model.backbone;
  const model::ModelConfig& config = backbone.config();
  const TrainData data = load_data(vm, task_list, task_model);
  const peft::MethodSet methods = method_set_from(vm);
  const std::vector<peft::Trainable> trainables =
      attach_methods(vm, settings, methods, backbone, data, task_list, session);
  log_parameter_counts(backbone, trainables);
  dist::NamedTensors named_trainables;
  for (const auto& t : trainables) named_trainables.emplace_back(t.name, t.tensor);

  // ---- start-up agreement, sampler, GradSync, optimizer -----------------------------------------------
  const FrozenIdentity frozen = identify_frozen(settings.model_arg, backbone, session.cpu_comm());
  agree_at_start_up(session, resolved_config, config, frozen, methods, trainables);
  tasks::MultiTaskSampler sampler = make_sampler(vm, settings, data, task_list, rank, world);
  const auto grad_sync = make_grad_sync(vm, comm, named_trainables, methods, config);
  const auto optimizer = optimizer_for(vm, named_trainables);
  const dist::LrSchedule schedule = lr_schedule(vm, settings);

  // ---- checkpoint identity + resume ------------------------------------------------------------------
  dist::CheckpointState identity = checkpoint_identity(config, frozen, methods, *optimizer,
                                                       resolved_config, named_trainables);
  int64_t first_step = 1;
  if (vm.count("resume")) {
    if (auto point = dist::resume_checkpoint(session.cpu_comm(), vm["resume"].as<std::string>(), settings.out_dir,
                                             &identity)) {
      dist::apply_training_state(point->state, named_trainables, *optimizer, sampler.task_sampler(0), rank);
      if (task_list.multi()) sampler.set_state_text(point->state.task_sampler);
      first_step = point->state.step + 1;
      log::info("resumed from {} (step {})", point->path, point->state.step);
    }
  }
  auto save_checkpoint = [&](int64_t step, double lr) {
    dist::CheckpointState s = dist::capture_training_state(step, named_trainables, *optimizer, sampler.task_sampler(0));
    if (task_list.multi()) s.task_sampler = sampler.state_text();
    s.lr = lr;
    s.schedule = fmt::format("{} base_lr={} warmup={} total={}", settings.schedule_name, schedule.base_lr,
                             schedule.warmup_steps, schedule.total_steps);
    s.config_ini = identity.config_ini;
    s.method = identity.method;
    s.backbone = identity.backbone;
    s.indices = identity.indices;
    log::info("checkpoint {}", dist::save_checkpoint(session.cpu_comm(), settings.out_dir, std::move(s),
                                                     settings.ckpt_keep));
  };
  StepLog step_log(vm, rank, settings.steps);

  // ---- the loop ---------------------------------------------------------------------------------
  backbone.set_training(true);
  double last_loss = 0;
  model::reset_device_peak(device);
  for (int64_t step = first_step; step <= settings.steps; ++step) {
    const auto step_start = Clock::now();
    const at::Tensor loss_sum =
        forward_backward(settings, methods, backbone, data, task_list, sampler, *grad_sync, device);
    const dist::GradSyncStats stats = grad_sync->last_stats();

    // step: gradients are identical on every rank now, so clipping needs no communication.
    const double grad_norm = settings.clip > 0 ? dist::clip_grad_norm(named_trainables, settings.clip) : 0.0;
    const double lr = schedule.lr(step - 1);  // HF's convention: steps already taken
    optimizer->step(lr);
    grad_sync->zero_grad();

    // Indices that move (FISH --fish.refresh-every): a new mask of the same count; values and optimizer
    // state follow the indices both masks hold, and checkpoints from now on store the new indices.
    for (const auto& m : methods.methods()) {
      if (m->refresh_every() <= 0 || step % m->refresh_every() != 0 || step == settings.steps) continue;
      const peft::IndexRefresh moved =
          m->refresh(backbone, training_samples(data.train, task_list, settings.fish_seed + step), comm);
      optimizer->permute_state(moved.trainable, moved.carry);
      identity.indices = checkpoint_indices(methods);
      identity.method = methods.describe();  // its mask hash: a resume compares it
    }

    // log
    const LossAndPreemption agreed = average_loss(session, loss_sum);
    last_loss = agreed.loss;
    const double step_time = seconds_since(step_start);
    nlohmann::json record = {{"step", step}, {"loss", last_loss}, {"lr", lr}, {"step_time_s", step_time},
                             {"bytes_allreduced", stats.bytes}, {"collectives", stats.collectives},
                             {"exposed_comm_s", stats.exposed_comm_s}, {"grad_norm", grad_norm}};
    // The most GPU memory the caching allocator held since training began (weights included).
    if (device.is_cuda()) record["device_peak_bytes"] = model::device_peak_bytes(device);
    step_log.write(record);
    step_log.step(step, last_loss, lr, step_time, stats);

    // eval at intervals and at the end.
    if ((settings.eval_every > 0 && step % settings.eval_every == 0) || step == settings.steps) {
      step_log.end_bar_line();
      std::vector<Evaluation> evaluations;
      for (size_t t = 0; t < task_list.tasks.size(); ++t) {
        evaluations.push_back(evaluate(methods, backbone, data.dev[t], task_list, static_cast<int64_t>(t),
                                       settings.eval_batch, comm));
        const Evaluation& e = evaluations.back();
        log::info("eval step {}: dev {} on {} examples{} ({:.1f} s)", step, metrics_text(e, *task_list.tasks[t]),
                  e.metrics.count, task_list.multi() ? " of " + task_list.tasks[t]->name : "", e.seconds);
      }
      if (task_list.multi()) {
        const nlohmann::json record = multitask_eval_record(step, evaluations, task_list);
        step_log.write(record);
        log::info("eval step {}: average GLUE score {:.4f} over {}", step, record["eval_average"].get<double>(),
                  task_list.names());
      } else {
        step_log.write(eval_record(step, evaluations.front(), *task_list.tasks.front()));
      }
    }

    // checkpoint: every --ckpt.every steps, at the end, and on preemption (then exit 75).
    const bool periodic = settings.ckpt_every > 0 && step % settings.ckpt_every == 0;
    if (!settings.out_dir.empty() && (agreed.preempted || step == settings.steps || periodic)) {
      save_checkpoint(step, lr);
    }
    if (agreed.preempted) {
      log::info("preempted at step {}: {}, exiting {}", step,
                settings.out_dir.empty() ? "no --out, so nothing was saved" : "checkpoint written",
                dist::kPreemptedExitCode);
      return dist::kPreemptedExitCode;
    }
  }
  const nlohmann::json fingerprint = final_record(settings.steps, trainables);
  step_log.write(fingerprint);
  log::info("done: final loss {:.6f}, trainable values L2 {:.6f}", last_loss, fingerprint["trainable_l2"].get<double>());
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
