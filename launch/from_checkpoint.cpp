// launch/from_checkpoint.cpp — see from_checkpoint.h.
#include <c10/core/GradMode.h>
#include "launch/from_checkpoint.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "dist/agreement.h"
#include "launch/cli.h"
#include "launch/method_options.h"
#include "model/load.h"
#include "sparse/methods.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace dt::launch {

std::string resolve_checkpoint(const std::string& path_or_dir, const std::string& subcommand) {
  const std::string who = "deltatune " + subcommand + ": ";
  if (!fs::exists(path_or_dir)) throw_usage_error(who + "checkpoint '" + path_or_dir + "' does not exist");
  if (!fs::is_directory(path_or_dir)) return path_or_dir;
  std::ifstream in(path_or_dir + "/latest");
  std::string latest;
  std::getline(in, latest);
  if (!latest.empty() && fs::exists(path_or_dir + "/" + latest)) return path_or_dir + "/" + latest;
  const auto all = dist::list_checkpoints(path_or_dir);
  if (all.empty()) throw_usage_error(who + "directory '" + path_or_dir + "' holds no checkpoint");
  return all.front();
}

po::variables_map parse_checkpoint_config(const std::string& config_ini, const std::vector<std::string>& overrides,
                                          const std::string& path) {
  po::options_description desc;
  train_subcommand().add_options(desc);
  po::variables_map vm;
  try {
    // po::store keeps the first value it sees: the overrides, then the checkpoint's INI.
    po::store(po::command_line_parser(overrides).options(desc).run(), vm);
    std::istringstream ini(config_ini);
    po::store(po::parse_config_file(ini, desc, /*allow_unregistered=*/false), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw_usage_error("checkpoint " + path + ": its config does not parse with this deltatune's train options: " +
                      e.what());
  }
  return vm;
}

namespace {

// The keys of two backbone configs (JSON objects of HF config names) whose values differ.
std::string config_difference(const std::string& saved, const std::string& current) {
  const auto a = nlohmann::json::parse(saved, nullptr, /*allow_exceptions=*/false);
  const auto b = nlohmann::json::parse(current, nullptr, /*allow_exceptions=*/false);
  if (!a.is_object() || !b.is_object()) return saved + " vs " + current;
  std::string out;
  for (const auto& [key, value] : a.items()) {
    const std::string other = b.contains(key) ? b[key].dump() : "absent";
    if (other != value.dump()) out += (out.empty() ? "" : ", ") + key + " " + value.dump() + " vs " + other;
  }
  return out;
}

}  // namespace

RestoredModel restore_model(const std::string& checkpoint_path, const CheckpointOverrides& overrides,
                            bool check_identity) {
  RestoredModel r;
  r.path = checkpoint_path;
  r.state = dist::read_checkpoint(checkpoint_path);  // every checksum verified
  const dist::CheckpointState& saved = r.state;
  auto refuse = [&](const std::string& what) {
    throw_usage_error("checkpoint " + checkpoint_path + ": " + what);
  };

  // ---- the run's options, a few replaced -----------------------------------------------------------
  std::vector<std::string> words;
  auto override_with = [&](const char* option, const std::string& value) {
    if (!value.empty()) words.insert(words.end(), {std::string("--") + option, value});
  };
  override_with("model", overrides.model);
  override_with("tokenizer", overrides.tokenizer);
  override_with("data", overrides.data);
  r.options = parse_checkpoint_config(saved.config_ini, words, checkpoint_path);
  const std::string trained_task = r.options["task"].as<std::string>();
  r.task_list = tasks::parse_task_list(trained_task);
  r.task = r.task_list.tasks.front();
  if (!overrides.task.empty()) {
    for (const tasks::TaskInfo* asked : tasks::parse_task_list(overrides.task).tasks) {
      bool trained = false;
      for (const tasks::TaskInfo* t : r.task_list.tasks) trained |= t == asked;
      if (!trained) {
        refuse("it was trained on " + trained_task + " (its heads and label words are for that); evaluating it on " +
               asked->name + " would be meaningless — train on " + asked->name + " instead");
      }
    }
  }

  // ---- the backbone, checked against the recorded identity -----------------------------------------
  const std::string model_arg = r.options["model"].as<std::string>();
  const dist::BackboneIdentity& id = saved.backbone;
  torch::manual_seed(r.options["train.seed"].as<uint64_t>());  // a named config's random init, as train did
  try {
    r.model = load_task_model(model_arg, r.options["tokenizer"].as<std::string>(), r.task_list);
  } catch (const UsageError& e) {
    refuse("it was trained on backbone '" + id.name + "', and --model " + model_arg + " does not load as it: " +
           e.what());
  }
  model::Backbone& backbone = *r.model.backbone;
  const std::string config_json = nlohmann::json(model::config_metadata(backbone.config())).dump();
  if (!id.config.empty() && id.config != config_json) {
    refuse("it was trained on backbone '" + id.name + "', and --model " + model_arg + " is another one (" +
           config_difference(id.config, config_json) + ")");
  }
  bool sha_checked = false;
  const std::string weights_file = model::resolve_model_path(model_arg);  // a HF directory: its model.safetensors
  if (check_identity && !id.weights_sha256.empty() && fs::is_regular_file(weights_file)) {
    const std::string sha = dist::sha256_file_cached(weights_file).sha256;
    if (sha != id.weights_sha256) {
      refuse("it was trained on weights with sha256 " + id.weights_sha256 + " ('" + id.name + "'), and --model " +
             model_arg + " has sha256 " + sha + ": another backbone (give the original weights with --model)");
    }
    sha_checked = true;
  }

  // ---- the method, its fixed indices, the learned values -------------------------------------------
  r.methods = method_set_from(r.options);
  sparse::restore_indices(r.methods, stored_indices(saved.indices), backbone.config());  // FISH: the stored mask, no Fisher
  r.trainables = r.methods.apply(backbone);

  std::vector<at::Tensor> frozen;
  for (const auto& [name, tensor] : backbone.named_parameters()) {
    r.backbone_params += tensor.numel();
    if (!tensor.requires_grad()) frozen.push_back(tensor);
  }
  if (check_identity && !sha_checked && !id.tensors_hash.empty()) {
    const std::string hash = dist::hash_hex(dist::hash_tensors(frozen));
    if (hash != id.tensors_hash) {
      refuse("its frozen backbone tensors hash to " + id.tensors_hash + ", and --model " + model_arg +
             " gives " + hash + " (other weights, or another --train.seed for a random-init config)");
    }
  }

  dist::CheckpointState expected;  // what validate_against compares besides the backbone (checked above)
  expected.backbone = saved.backbone;
  expected.method = r.methods.describe();
  for (const auto& t : r.trainables) expected.trainables.emplace_back(t.name, t.tensor);
  expected.indices = checkpoint_indices(r.methods);
  dist::validate_against(saved, expected, checkpoint_path);  // method, names, shapes, dtypes, masks

  std::map<std::string, const at::Tensor*> values;
  for (const auto& [name, t] : saved.trainables) values[name] = &t;
  c10::NoGradGuard no_grad;
  for (const auto& t : r.trainables) t.tensor.copy_(*values.at(t.name));
  return r;
}

}  // namespace dt::launch
