#include "launch/method_options.h"

#include <fmt/format.h>

#include <type_traits>
#include <variant>

#include "sparse/methods.h"
#include "tasks/multitask.h"

namespace dt::launch {
namespace {

// One method option as a command-line / config-file option of its declared type. Doubles show their
// shortest form in --help (0.005, not lexical_cast's 0.0050000000000000001).
void add_option(po::options_description& desc, const peft::OptionSpec& spec) {
  const char* key = spec.key.c_str();
  const char* help = spec.help.c_str();
  std::visit(
      [&](const auto& value) {
        using T = std::decay_t<decltype(value)>;
        if constexpr (std::is_same_v<T, bool>) {
          desc.add_options()(key, po::bool_switch(), help);  // a switch: false unless given
        } else if (!spec.has_default) {
          desc.add_options()(key, po::value<T>(), help);
        } else if constexpr (std::is_same_v<T, double>) {
          desc.add_options()(key, po::value<T>()->default_value(value, fmt::format("{}", value)), help);
        } else {
          desc.add_options()(key, po::value<T>()->default_value(value), help);
        }
      },
      spec.default_value);
}

}  // namespace

void add_method_options(po::options_description& desc) {
  desc.add_options()
      ("method", po::value<std::string>()->default_value("full"),
       "PEFT method, or several joined by '+': full, bitfit, houlsby, pfeiffer, parallel_adapter, lora, prefix, "
       "prompt, ia3, compacter, mam, lst, fish, dsee, sparse_adapter; multi-task (with --task a,b,...): shared_adapter, hyperformer, "
       "hyperprompt, attempt; s3delta (a searched structure: --structure FILE)")
      ("structure", po::value<std::string>(),
       "FILE: retrain the S3Delta structure that `deltatune search --method s3delta --out FILE` wrote (implies "
       "--method s3delta)");
  // Each method declares its own section (--lora.r, ...): declared once, where the method lives.
  sparse::register_methods();  // fish, dsee: peft cannot depend on sparse, so launch registers them
  for (const auto& spec : peft::Registry::global().all_options()) add_option(desc, spec);
}

peft::OptionValues method_option_values(const po::variables_map& vm) {
  sparse::register_methods();
  peft::OptionValues values;
  for (const auto& spec : peft::Registry::global().all_options()) {
    if (!vm.count(spec.key)) continue;
    std::visit([&](const auto& declared) {
                 using T = std::decay_t<decltype(declared)>;
                 values.set(spec.key, vm[spec.key].as<T>());
               },
               spec.default_value);
  }
  if (vm.count("structure")) values.set("s3delta.structure", vm["structure"].as<std::string>());
  return values;
}

peft::MethodSet method_set_from(const po::variables_map& vm) {
  // Task-conditioned methods size their per-task tensors by the run's --task list (eval and export
  // pass the checkpoint's stored options: the tasks it trained).
  std::vector<std::string> tasks;
  if (vm.count("task")) {
    for (const tasks::TaskInfo* task : tasks::parse_task_list(vm["task"].as<std::string>()).tasks) {
      tasks.push_back(task->name);
    }
  }
  return peft::MethodSet::from_names(vm["method"].as<std::string>(), method_option_values(vm), tasks);
}

}  // namespace dt::launch
