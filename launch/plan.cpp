// launch/plan.cpp — `deltatune plan`: parameter, trainable, bytes-per-step and checkpoint accounting
// without allocating the model.
//
// Design note: everything comes from the meta description (model::describe) and the methods' plan()
// (peft::MethodSet), i.e. names, shapes and dtypes only, so `plan --model t5-11b` runs in a few MB.
// A weights file is read for its header only: a llama2.c `.bin` for its 7 int32, a `.safetensors`
// for its JSON header and the config.json beside it (the data section is mapped, never touched), a
// directory as its model.safetensors.
//   total_params             the backbone's parameters (the published count; no task head)
//   trainable_params/_bytes  what the methods create or unfreeze, task head included
//   eligible_params          the pool a sparse method chooses from (the backbone, for now)
//   bytes_per_step_per_rank  ring all-reduce payload per rank: 2 (n - 1) / n x trainable bytes
//   checkpoint_bytes         a checkpoint holds the trainable tensors only
#include <c10/core/ScalarType.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <map>
#include <set>

#include "launch/cli.h"
#include "launch/method_options.h"
#include "model/config.h"
#include "model/load.h"
#include "tasks/glue.h"
#include "tasks/multitask.h"
#include "peft/method.h"
#include "sparse/methods.h"
#include "util/error.h"
#include "util/format.h"

namespace dt::launch {

namespace {

// "encoder.block.3.layer.0.SelfAttention.q.weight" -> "encoder.block.*.layer.0.SelfAttention.q": one
// row per kind of tensor, whatever the depth.
std::string group_of(const std::string& name) {
  std::string out;
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    const std::string part = name.substr(start, dot - start);
    const bool index = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
    // Keep the layer index of "layer.0" inside a T5 block: it names the sublayer, not the depth.
    const bool sublayer = index && out.size() >= 6 && out.compare(out.size() - 6, 6, "layer.") == 0 &&
                          out.find(".block.") != std::string::npos;
    out += (index && !sublayer) ? "*" : part;
    if (dot < name.size()) out += '.';
    start = dot + 1;
  }
  const auto last = out.rfind('.');
  return last == std::string::npos ? out : out.substr(0, last);
}

int64_t bytes_of(const std::vector<model::TensorMeta>& metas) {
  int64_t bytes = 0;
  for (const auto& m : metas) bytes += m.numel() * static_cast<int64_t>(c10::elementSize(m.dtype));
  return bytes;
}

// "float32", "bfloat16", ... (the names torch users read).
std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::ScalarType::Float: return "float32";
    case c10::ScalarType::Half: return "float16";
    case c10::ScalarType::BFloat16: return "bfloat16";
    case c10::ScalarType::Double: return "float64";
    case c10::ScalarType::Long: return "int64";
    case c10::ScalarType::Int: return "int32";
    default: return c10::toString(dtype);
  }
}

const char* arch_name(model::Arch arch) {
  switch (arch) {
    case model::Arch::T5: return "t5";
    case model::Arch::Bert: return "bert";
    case model::Arch::Llama: return "llama";
  }
  return "?";
}

int run_plan(const po::variables_map& vm) {
  const std::string model_arg = vm["model"].as<std::string>();
  const int64_t world = vm["world-size"].as<int64_t>();
  if (world < 1) throw UsageError("--world-size must be >= 1, got " + std::to_string(world));
  // Several tasks: their heads stacked (tasks/multitask.h), so the head counts every task's labels.
  const int64_t num_labels = tasks::parse_task_list(vm["task"].as<std::string>()).head_columns;
  const auto methods = method_set_from(vm);

  // ---- the model's tensors, from a config or a file header
  std::vector<model::TensorMeta> metas, trainable;
  std::string arch = "?";
  sparse::SparseAccounting sparse_acc;  // eligible pool and index bytes of sparse methods
  // A named config, a llama2.c file, a safetensors file or a HF model directory: the config only (sizes from
  // the header and config.json; no weights read), so every method plans on real files as on named configs.
  const model::ModelConfig config = model::read_model_config(model_arg);
  metas = model::describe(config);
  trainable = methods.plan(config, num_labels);
  sparse_acc = sparse::sparse_accounting(methods, config);
  arch = arch_name(config.arch);

  const int64_t total = model::total_params(metas);
  const int64_t trainable_params = model::total_params(trainable);
  // Tensors a method adds (adapters, a classification head the backbone lacks) count in "all params", as
  // train's line and PEFT's print_trainable_parameters() count them: `full` is then 100%, never more.
  std::set<std::string> backbone_names;
  for (const auto& m : metas) backbone_names.insert(m.name);
  int64_t added_params = 0;
  for (const auto& t : trainable)
    if (!backbone_names.count(t.name)) added_params += t.numel();
  const int64_t trainable_bytes = bytes_of(trainable);
  const int64_t per_step = world > 1 ? 2 * (world - 1) * trainable_bytes / world : 0;
  const int64_t eligible = sparse_acc.sparse ? sparse_acc.eligible_params : total;
  const int64_t checkpoint_bytes = trainable_bytes + sparse_acc.index_bytes;
  std::map<std::string, int64_t> dtype_bytes;
  for (const auto& m : metas) dtype_bytes[dtype_name(m.dtype)] += m.numel() * c10::elementSize(m.dtype);

  if (vm["json"].as<bool>()) {
    nlohmann::json j;
    j["model"] = model_arg;
    j["arch"] = arch;
    j["method"] = methods.describe();
    j["world_size"] = world;
    j["total_params"] = total;
    j["total_bytes"] = bytes_of(metas);
    j["trainable_params"] = trainable_params;
    j["trainable_bytes"] = trainable_bytes;
    j["eligible_params"] = eligible;
    j["index_bytes"] = sparse_acc.index_bytes;
    j["bytes_per_step_per_rank"] = per_step;
    j["checkpoint_bytes"] = checkpoint_bytes;
    j["dtype_bytes"] = dtype_bytes;
    j["tensors"] = metas.size();
    std::cout << j.dump() << "\n";
    return 0;
  }

  // ---- human summary: one row per kind of tensor
  std::vector<std::string> order;
  std::map<std::string, std::pair<int64_t, int64_t>> groups;  // tensors, params
  for (const auto& m : metas) {
    const std::string g = group_of(m.name);
    if (!groups.count(g)) order.push_back(g);
    groups[g].first += 1;
    groups[g].second += m.numel();
  }
  size_t width = 8;
  for (const auto& g : order) width = std::max(width, g.size());
  std::cout << fmt::format("model {} ({}), {} tensors\n", model_arg, arch, metas.size());
  std::cout << fmt::format("{:<{}} {:>7} {:>16} {:>7}\n", "# group", width, "tensors", "params", "%");
  for (const auto& g : order) {
    const auto [n, p] = groups[g];
    std::cout << fmt::format("{:<{}} {:>7} {:>16} {:>6.2f}%\n", g, width, n, with_commas(p), 100.0 * p / total);
  }
  std::cout << fmt::format("total params: {}", with_commas(total));
  for (const auto& [dtype, bytes] : dtype_bytes) std::cout << fmt::format(" ({}: {})", dtype, human_bytes(bytes));
  std::cout << "\n"
            << peft::accounting_line(trainable_params, total + added_params) << "  [--method " << methods.describe() << "]\n"
            << fmt::format("trainable bytes: {} | checkpoint: {} | all-reduce per step per rank (n={}): {}\n",
                           human_bytes(trainable_bytes), human_bytes(checkpoint_bytes), world, human_bytes(per_step));
  if (sparse_acc.sparse) {
    std::cout << fmt::format("sparse: chosen from {} eligible params; indices {}\n", with_commas(eligible),
                             human_bytes(sparse_acc.index_bytes));
  }
  return 0;
}

}  // namespace

Subcommand plan_subcommand() {
  Subcommand sub;
  sub.name = "plan";
  sub.summary = "parameter, trainable, bytes-per-step and checkpoint accounting without allocating the model";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    add_model_options(desc);
    add_method_options(desc);
    desc.add_options()
        ("json", po::bool_switch(), "print one JSON object instead of the table")
        ("world-size", po::value<int64_t>()->default_value(2), "ranks the all-reduce volume is computed for");
  };
  sub.run = run_plan;
  return sub;
}

}  // namespace dt::launch
