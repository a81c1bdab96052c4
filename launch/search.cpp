// launch/search.cpp — `deltatune search --method s3delta`; see search.h.
#include "launch/search.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <map>

#include "dist/agreement.h"
#include "dist/checkpoint.h"
#include "dist/sampler.h"
#include "launch/cli.h"
#include "launch/method_options.h"
#include "launch/session.h"
#include "launch/task_model.h"
#include "model/device.h"
#include "model/load.h"
#include "tasks/glue.h"
#include "tasks/multitask.h"
#include "util/error.h"
#include "util/format.h"
#include "util/log.h"

namespace dt::launch {

namespace s3 = peft::s3delta;
using Clock = std::chrono::steady_clock;

namespace {
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

// ---- the supernet --------------------------------------------------------------------------------------

StructureSearch::StructureSearch(model::Backbone& backbone, const s3::SpaceOptions& space, int64_t budget,
                                 const s3::SearchOptions& options, const c10::Device& device)
    : backbone_(backbone), options_(options), budget_(budget) {
  candidates_ = s3::search_space(backbone.config(), space);
  if (candidates_.empty()) throw_usage_error("--s3delta.kinds " + s3::kinds_text(space.kinds) + ": no candidate position");
  for (const auto& c : candidates_) sizes_.push_back(c.params());
  for (auto& [name, tensor] : backbone.named_parameters()) tensor.requires_grad_(false);
  for (auto& t : s3::attach_candidates(backbone, candidates_, space, gates_)) weights_.emplace_back(t.name, t.tensor);
  for (auto& [name, tensor] : backbone.named_parameters()) {
    if (model::is_task_head(name)) {
      tensor.requires_grad_(true);
      weights_.emplace_back(name, tensor);
    }
  }
  for (auto& [name, tensor] : weights_) {
    at::Tensor t = tensor;  // the same tensor: set_data moves it for the hooks holding it too
    model::move_tensor(t, device);
  }
  // The paper's α = 0 at init: every module equally likely, p = B / Σ n.
  alphas_ = at::zeros({static_cast<int64_t>(candidates_.size())}, at::TensorOptions(at::kFloat).device(device))
                .requires_grad_(true);
}

int64_t StructureSearch::space_params() const {
  int64_t n = 0;
  for (int64_t s : sizes_) n += s;
  return n;
}

std::vector<double> StructureSearch::host_alphas() const {
  const at::Tensor a = alphas_.detach().to(at::kCPU, at::kDouble).contiguous();
  return {a.data_ptr<double>(), a.data_ptr<double>() + a.numel()};
}

void StructureSearch::set_gates(const at::Tensor& u, bool structure_step) {
  const double shift = s3::solve_shift(host_alphas(), sizes_, budget_, options_.beta);
  c10::AutoGradMode grad_mode(structure_step);
  const at::Tensor p = s3::gate_probabilities(alphas_, shift, options_.beta);
  gates_->z = options_.gumbel ? s3::relaxed_bernoulli(p, u.to(p.device())) : p;
  if (!structure_step) gates_->z = gates_->z.detach();
}

std::vector<double> StructureSearch::probabilities() const {
  const double shift = s3::solve_shift(host_alphas(), sizes_, budget_, options_.beta);
  c10::NoGradGuard no_grad;
  const at::Tensor p = s3::gate_probabilities(alphas_, shift, options_.beta).to(at::kCPU, at::kDouble).contiguous();
  return {p.data_ptr<double>(), p.data_ptr<double>() + p.numel()};
}

// ---- the loop ------------------------------------------------------------------------------------------

void run_search_loop(StructureSearch& search, const SearchData& data, const SearchLoopOptions& options,
                     comm::Communicator& comm, comm::Communicator& cpu_comm,
                     const std::function<void(const SearchStepStats&)>& on_step) {
  const int rank = comm.rank(), world = comm.size();
  const c10::Device device = search.alphas().device();
  const int64_t M = search.alphas().numel();
  dist::SamplerOptions sampler_options;
  sampler_options.seed = options.seed;
  dist::DistributedSampler train_sampler(data.train_size, rank, world, sampler_options);
  sampler_options.seed = options.seed + 1;
  dist::DistributedSampler heldout_sampler(data.heldout_size, rank, world, sampler_options);

  const dist::NamedTensors alpha_params = {{"s3delta.alphas", search.alphas()}};
  dist::GradSync weight_sync(comm, search.weights(), options.grad_sync);
  dist::GradSync alpha_sync(comm, alpha_params, options.grad_sync);
  dist::OptimizerOptions weight_optim;
  weight_optim.adamw.weight_decay = options.weight_decay;
  const auto weight_optimizer = dist::make_optimizer(search.weights(), weight_optim);
  const auto alpha_optimizer = dist::make_optimizer(alpha_params, {});  // AdamW, no weight decay (the paper's)
  dist::LrSchedule weight_lr;
  weight_lr.kind = dist::parse_lr_schedule(options.schedule);
  weight_lr.base_lr = options.lr;
  weight_lr.warmup_steps = options.warmup_steps;
  weight_lr.total_steps = options.steps;
  dist::LrSchedule alpha_lr = weight_lr;  // the paper decays both linearly; α has no warmup
  alpha_lr.base_lr = search.options().alpha_lr;
  alpha_lr.warmup_steps = 0;

  auto batch_of = [&](const std::function<model::Batch(const std::vector<int64_t>&)>& slice,
                      dist::DistributedSampler& sampler) {
    return model::batch_to(slice(sampler.next_batch(options.batch_size)), device);
  };

  for (int64_t step = 1; step <= options.steps; ++step) {
    const auto start = Clock::now();
    // The same noise on every rank: a generator of (seed, step) alone.
    at::Tensor u;
    {
      auto gen = at::detail::createCPUGenerator(options.seed * 1000003ULL + static_cast<uint64_t>(step));
      u = at::rand({2, M}, gen, at::kFloat);
    }
    SearchStepStats stats;
    stats.step = step;

    // ---- 1. structure step on a held-out batch: gradients into α only
    search.set_gates(u[0], /*structure_step=*/true);
    const at::Tensor heldout_loss = search.loss(batch_of(data.heldout, heldout_sampler));
    torch::autograd::backward({heldout_loss}, {}, /*retain_graph=*/false, /*create_graph=*/false, {search.alphas()});
    alpha_sync.finish();
    stats.alphas = alpha_sync.last_stats();
    if (search.options().alpha_clip > 0) dist::clip_grad_norm(alpha_params, search.options().alpha_clip);
    stats.alpha_lr = alpha_lr.lr(step - 1);
    alpha_optimizer->step(stats.alpha_lr);
    alpha_sync.zero_grad();

    // ---- 2. weight step on a training batch, gates fixed
    search.set_gates(u[1], /*structure_step=*/false);
    const at::Tensor loss = search.loss(batch_of(data.train, train_sampler));
    loss.backward();
    weight_sync.finish();
    stats.weights = weight_sync.last_stats();
    if (options.clip > 0) dist::clip_grad_norm(search.weights(), options.clip);
    stats.lr = weight_lr.lr(step - 1);
    weight_optimizer->step(stats.lr);
    weight_sync.zero_grad();

    // ---- log: both losses averaged over ranks (not counted in the bytes, as train's loss)
    at::Tensor both = at::zeros({2}, at::kDouble);
    both[0] = loss.item<double>();
    both[1] = heldout_loss.item<double>();
    if (world > 1) cpu_comm.all_reduce(both, {comm::ReduceOp::Average})->wait();
    stats.loss = both[0].item<double>();
    stats.heldout_loss = both[1].item<double>();
    stats.seconds = seconds_since(start);
    if (on_step) on_step(stats);
  }
}

s3::Structure chosen_structure(const StructureSearch& search, const s3::SpaceOptions& space,
                               const model::ModelConfig& config) {
  const std::vector<double> p = search.probabilities();
  const std::vector<double> alphas = search.host_alphas();
  const s3::Selection selection = s3::select_under_budget(search.sizes(), p, search.budget());
  std::vector<char> chosen(p.size(), 0);
  for (size_t i : selection.chosen) chosen[i] = 1;
  s3::Structure s;
  s.backbone_name = config.name;
  s.backbone_config = model::config_metadata(config);
  s.backbone_params = model::total_params(model::describe(config));
  s.space = space;
  s.space.bottleneck = s3::adapter_bottleneck(config, space);
  s.budget_params = search.budget();
  for (size_t i = 0; i < p.size(); ++i) {
    const s3::Candidate& c = search.candidates()[i];
    s.candidates.push_back({c.name, s3::kind_name(c.kind), c.params(), p[i], alphas[i], chosen[i] != 0});
    if (chosen[i]) s.modules.push_back(s.candidates.back());
  }
  return s;
}

// ---- the subcommand ------------------------------------------------------------------------------------

namespace {

void add_search_only_options(po::options_description& desc) {
  desc.add_options()
      ("out", po::value<std::string>(), "where to write the structure file (JSON), for `train --structure FILE`")
      ("metrics", po::value<std::string>(), "JSON Lines metrics file (one object per step)")
      ("train.max-len", po::value<int64_t>()->default_value(64), "tokens per example (as train's)")
      ("train.weight-decay", po::value<double>()->default_value(0.0), "decoupled weight decay of the module weights")
      ("train.schedule", po::value<std::string>()->default_value("linear"),
       "linear | cosine | constant (after warmup), for the weights' and the structure's learning rates")
      ("train.warmup-steps", po::value<int64_t>()->default_value(0), "linear warmup steps of the weights' learning rate")
      ("train.clip", po::value<double>()->default_value(1.0), "clip the weights' global gradient L2 norm (0: off)")
      ("train.pad-to", po::value<int64_t>()->default_value(0), "pad every batch to N tokens (0: to its longest row)");
}

// One line per kind: "lora 30 (4,160 params), bitfit 42 (3,356), ...".
std::string space_summary(const std::vector<s3::Candidate>& candidates) {
  std::map<std::string, std::pair<int64_t, int64_t>> by_kind;
  std::vector<std::string> order;
  for (const auto& c : candidates) {
    const std::string k = s3::kind_name(c.kind);
    if (!by_kind.count(k)) order.push_back(k);
    by_kind[k].first += 1;
    by_kind[k].second += c.params();
  }
  std::string out;
  for (const auto& k : order) {
    out += fmt::format("{}{} {} ({} params)", out.empty() ? "" : ", ", k, by_kind[k].first, with_commas(by_kind[k].second));
  }
  return out;
}

int run_search(const po::variables_map& vm) {
  // ---- options, checked before anything is loaded ---------------------------------------------------
  if (!vm.count("out")) throw_usage_error("deltatune search: give the structure file to write with --out FILE");
  const std::string out_path = vm["out"].as<std::string>();
  if (vm.count("structure")) {
    throw_usage_error("deltatune search: --structure retrains a structure (train, plan); search writes one with --out");
  }
  if (vm["method"].as<std::string>() != "s3delta" && !vm["method"].defaulted()) {
    throw_usage_error("deltatune search: --method " + vm["method"].as<std::string>() +
                      " has no structure to search; search runs --method s3delta");
  }
  const peft::OptionValues values = method_option_values(vm);
  const s3::SpaceOptions space = s3::space_options(values);
  const s3::SearchOptions s3_options = s3::search_options(values);
  const tasks::TaskList task_list = tasks::parse_task_list(vm["task"].as<std::string>());
  if (task_list.multi()) throw_usage_error("deltatune search: one --task at a time (got " + task_list.names() + ")");
  SearchLoopOptions loop;
  loop.steps = vm["train.steps"].as<int64_t>();
  loop.batch_size = vm["train.batch-size"].as<int64_t>();
  loop.seed = vm["train.seed"].as<uint64_t>();
  loop.lr = vm["train.lr"].as<double>();
  loop.clip = vm["train.clip"].as<double>();
  loop.warmup_steps = vm["train.warmup-steps"].as<int64_t>();
  loop.schedule = vm["train.schedule"].as<std::string>();
  loop.weight_decay = vm["train.weight-decay"].as<double>();
  dist::parse_lr_schedule(loop.schedule);
  loop.grad_sync.bucket_cap_mb = vm["dist.bucket-mb"].as<double>();
  loop.grad_sync.first_bucket_cap_mb = std::min(1.0, loop.grad_sync.bucket_cap_mb);
  loop.grad_sync.compress = dist::parse_compression(vm["dist.compress"].as<std::string>());
  if (loop.steps <= 0 || loop.batch_size <= 0) throw_usage_error("--train.steps and --train.batch-size must be positive");
  if (vm["train.accum"].as<int64_t>() != 1) throw_usage_error("deltatune search: --train.accum must be 1 (no accumulation)");
  const model::ModelConfig planned = model::read_model_config(vm["model"].as<std::string>());
  const int64_t backbone_params = model::total_params(model::describe(planned));
  const int64_t budget = s3::budget_params(s3_options, backbone_params);
  const std::vector<s3::Candidate> space_list = s3::search_space(planned, space);
  int64_t smallest = std::numeric_limits<int64_t>::max(), space_params = 0;
  for (const auto& c : space_list) {
    smallest = std::min(smallest, c.params());
    space_params += c.params();
  }
  if (space_list.empty()) throw_usage_error("--s3delta.kinds " + s3::kinds_text(space.kinds) + ": no candidate position");
  if (budget < smallest) {
    throw_usage_error(fmt::format("deltatune search: a budget of {} parameters ({} of {}'s {}) is smaller than the "
                                  "smallest candidate module ({}): nothing fits; raise --s3delta.budget or give "
                                  "--s3delta.budget-params", with_commas(budget),
                                  s3_options.budget_params > 0 ? std::string("--s3delta.budget-params")
                                                               : fmt::format("{}", s3_options.budget),
                                  planned.name, with_commas(backbone_params), smallest));
  }

  // ---- session, model, data --------------------------------------------------------------------------
  Session session(session_options(vm));
  comm::Communicator& comm = session.comm();
  const int rank = comm.rank(), world = comm.size();
  const auto start = Clock::now();
  po::options_description desc;
  search_subcommand().add_options(desc);
  const std::string resolved_config = render_config(desc, vm);
  log::info("deltatune search: {} ranks, backend {}, device {}, {} torch thread(s) per rank", world,
            comm.backend_name(), session.device().str(), session.threads());
  log::info("resolved config:\n{}", resolved_config);

  TaskModel m = load_model(vm, task_list, session.device(), loop.seed);
  model::Backbone& backbone = *m.backbone;
  const tasks::TaskInfo& task = *task_list.tasks.front();
  const tasks::EncodedDataset train = tasks::encode_all(
      tasks::read_glue(vm["data"].as<std::string>(), task.name, "train"), *m.tokenizer,
      tasks::encode_options_for(backbone.config(), task.name, vm["train.max-len"].as<int64_t>()));
  // The held-out slice: the last --s3delta.heldout of a portable shuffle of the training set (the paper
  // splits it in halves at random); the same split on every rank.
  const std::vector<int64_t> order = dist::portable_permutation(train.size(), loop.seed);
  const auto heldout_n = static_cast<int64_t>(std::llround(s3_options.heldout * static_cast<double>(train.size())));
  if (heldout_n < 1 || heldout_n >= train.size()) {
    throw_usage_error(fmt::format("--s3delta.heldout {} leaves an empty slice of the {} training examples",
                                  s3_options.heldout, train.size()));
  }
  auto rows = std::make_shared<std::vector<int64_t>>(order);
  const int64_t train_n = train.size() - heldout_n;
  const int64_t pad_to = vm["train.pad-to"].as<int64_t>();
  auto slice = [&train, &task_list, rows, pad_to](int64_t first) {
    return [&train, &task_list, rows, pad_to, first](const std::vector<int64_t>& ids) {
      std::vector<int64_t> picked;
      for (int64_t id : ids) picked.push_back((*rows)[first + id]);
      model::Batch batch = tasks::collate(train, picked, pad_to);
      tasks::set_task_head(batch, task_list, 0);
      return batch;
    };
  };
  const SearchData data{slice(0), slice(train_n), train_n, heldout_n};
  log::info("data: {} training examples of {}: {} for the weights, {} held out for the structure", train.size(),
            task.name, train_n, heldout_n);

  // ---- the supernet, agreed ---------------------------------------------------------------------------
  StructureSearch search(backbone, space, budget, s3_options, session.device());
  std::vector<at::Tensor> initial;
  for (const auto& [name, t] : search.weights()) initial.push_back(t.detach().to(at::kCPU));
  std::string names;
  for (const auto& c : search.candidates()) names += c.name + ";";
  const FrozenIdentity frozen = identify_frozen(vm["model"].as<std::string>(), backbone, session.cpu_comm());
  dist::agree_or_throw(session.cpu_comm(), {{"config", resolved_config},
                                            {"backbone", frozen.agreed},
                                            {"search space", names},
                                            {"initial values", dist::hash_hex(dist::hash_tensors(initial))}});
  const double fraction = 100.0 * static_cast<double>(budget) / static_cast<double>(backbone_params);
  log::info("search space: {} candidate modules, {} params ({})", search.candidates().size(),
            with_commas(search.space_params()), space_summary(search.candidates()));
  log::info("budget: {} params ({:.4f}% of the backbone's {}); the weight steps train {} tensors (task head included)",
            with_commas(budget), fraction, with_commas(backbone_params), search.weights().size());

  // ---- the search -------------------------------------------------------------------------------------
  std::ofstream metrics;
  if (vm.count("metrics") && rank == 0) {
    metrics.open(vm["metrics"].as<std::string>(), std::ios::app);
    if (!metrics) throw_usage_error("--metrics: cannot write '" + vm["metrics"].as<std::string>() + "'");
  }
  const bool keep_all = budget >= search.space_params();
  uint64_t bytes_per_step = 0;
  int64_t steps_run = 0;
  if (keep_all) {
    log::info("the budget covers the whole search space: every module is kept, nothing to search");
  } else {
    backbone.set_training(true);
    run_search_loop(search, data, loop, comm, session.cpu_comm(), [&](const SearchStepStats& s) {
      bytes_per_step = s.weights.bytes + s.alphas.bytes;
      steps_run = s.step;
      if (metrics.is_open()) {
        metrics << nlohmann::json{{"step", s.step}, {"loss", s.loss}, {"heldout_loss", s.heldout_loss}, {"lr", s.lr},
                                  {"alpha_lr", s.alpha_lr}, {"step_time_s", s.seconds},
                                  {"bytes_allreduced", s.weights.bytes + s.alphas.bytes},
                                  {"alpha_bytes_allreduced", s.alphas.bytes},
                                  {"collectives", s.weights.collectives + s.alphas.collectives},
                                  {"exposed_comm_s", s.weights.exposed_comm_s + s.alphas.exposed_comm_s}}
                       .dump()
                << "\n" << std::flush;
      }
      log::info("step {:5d}/{} | loss {:.6f} | heldout loss {:.6f} | lr {:.3e} | alpha lr {:.3e} | {:.1f} ms | "
                "allreduced {} B weights + {} B structure in {} collective(s)", s.step, loop.steps, s.loss,
                s.heldout_loss, s.lr, s.alpha_lr, s.seconds * 1e3, s.weights.bytes, s.alphas.bytes,
                s.weights.collectives + s.alphas.collectives);
    });
  }

  // ---- the structure: the same on every rank, written by rank 0 --------------------------------------
  s3::Structure structure = chosen_structure(search, space, backbone.config());
  structure.budget_fraction = s3_options.budget_params > 0 ? 0.0 : s3_options.budget;
  const double seconds = seconds_since(start);
  structure.search = {{"task", task.name}, {"steps", std::to_string(steps_run)}, {"ranks", std::to_string(world)},
                      {"seed", std::to_string(loop.seed)}, {"batch_size_per_rank", std::to_string(loop.batch_size)},
                      {"heldout", fmt::format("{}", s3_options.heldout)}, {"lr", fmt::format("{}", loop.lr)},
                      {"alpha_lr", fmt::format("{}", s3_options.alpha_lr)}, {"beta", fmt::format("{}", s3_options.beta)},
                      {"gumbel", s3_options.gumbel ? "true" : "false"},
                      {"bytes_allreduced_per_step", std::to_string(bytes_per_step)}};
  const std::string agreed = dist::hash_hex(dist::hash_string(s3::structure_json(structure)));
  dist::agree_or_throw(session.cpu_comm(), {{"structure", agreed}});
  log::info("structure {} (the same on all {} ranks): {} of {} modules, {} of the {}-parameter budget", agreed, world,
            structure.modules.size(), structure.candidates.size(), with_commas(structure.total_params()),
            with_commas(budget));
  if (rank == 0) {
    structure.search["seconds"] = fmt::format("{:.1f}", seconds);
    structure.weights_sha256 = frozen.weights_sha256;
    s3::write_structure(structure, out_path);
    log::info("# {:<58} {:>8} {:>10} {:>9}", "chosen module", "kind", "params", "p");
    for (const auto& mod : structure.modules) {
      log::info("  {:<58} {:>8} {:>10} {:>9.4f}", mod.name, mod.kind, with_commas(mod.params), mod.p);
    }
    int64_t left_smallest = std::numeric_limits<int64_t>::max();
    for (const auto& c : structure.candidates) {
      if (!c.chosen) left_smallest = std::min(left_smallest, c.params);
    }
    const std::string rest =
        left_smallest == std::numeric_limits<int64_t>::max()
            ? std::string("every candidate kept")
            : fmt::format("the smallest module left out ({}) exceeds the {} left", left_smallest,
                          budget - structure.total_params());
    log::info("s3delta: {} of {} modules, {} trainable of a {}-parameter budget ({}); {} steps on {} rank(s) in "
              "{:.1f} s -> {}", structure.modules.size(), structure.candidates.size(),
              with_commas(structure.total_params()), with_commas(budget), rest, steps_run, world, seconds, out_path);
  }
  session.cpu_comm().barrier()->wait();  // the file exists when any rank returns
  return 0;
}

}  // namespace

Subcommand search_subcommand() {
  Subcommand sub;
  sub.name = "search";
  sub.summary = "S3Delta structure search under a parameter budget (--method s3delta); writes --out FILE";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    add_model_options(desc);
    add_method_options(desc);
    add_train_options(desc);
    add_dist_options(desc);
    add_search_only_options(desc);
  };
  sub.run = run_search;
  return sub;
}

}  // namespace dt::launch
