// launch/export.cpp — `deltatune export CKPT --format peft|merged --out DIR`: a checkpoint's model in
// the files other tools read.
//
// Design note: the model is rebuilt from the checkpoint (launch/from_checkpoint.h), then written as
//   * --format peft: an HF PEFT adapter directory — adapter_config.json + adapter_model.safetensors —
//     for the methods PEFT has a format for (lora, ia3, prompt), laid out as launch/peft_format.h says
//     (the same table `train --init-from` reads such a directory with).
//   * --format merged: every method merged into the backbone (MethodSet::merge: full, lora, ia3, fish,
//     dsee) and the backbone's parameters, task head included, written as one safetensors file with
//     the HF names and dtypes and the config keys in __metadata__ (model/load.h reads it back).
// Files are written atomically (temp + rename) and an existing file is replaced only with --force.
// export is a single process: under a launcher with more than one rank it refuses to start.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "launch/cli.h"
#include "launch/from_checkpoint.h"
#include "launch/peft_format.h"
#include "launch/session.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "util/error.h"
#include "util/format.h"
#include "util/log.h"

namespace fs = std::filesystem;

namespace dt::launch {
namespace {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

[[noreturn]] void usage(const std::string& what) { throw_usage_error("deltatune export: " + what); }

// ---- files -------------------------------------------------------------------------------------------

// Every file to be written is checked before any is: a refused export leaves nothing half done.
void check_writable(const std::string& dir, const std::vector<std::string>& files, bool force) {
  if (fs::exists(dir) && !fs::is_directory(dir)) usage("--out '" + dir + "' exists and is not a directory");
  for (const auto& f : files) {
    const std::string path = (fs::path(dir) / f).string();
    if (fs::exists(path) && !force) usage("'" + path + "' exists (--force replaces it)");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) usage("cannot create --out directory '" + dir + "': " + ec.message());
}

int run_export(const po::variables_map& vm) {
  if (!vm.count("checkpoint")) usage("give a checkpoint (file or train's --out directory)");
  if (!vm.count("out")) usage("--out DIR is required (the directory the files are written to)");
  const std::string format = vm["format"].as<std::string>();
  if (format != "peft" && format != "merged") usage("--format '" + format + "': expected peft | merged");
  for (const auto& env : read_launcher_env(std::getenv)) {
    if (env.size && *env.size > 1) {
      usage("export is a single process, and " + env.launcher + " started " + std::to_string(*env.size) +
            " ranks (run it without mpirun/srun)");
    }
  }
  const std::string dir = vm["out"].as<std::string>();
  const bool force = vm["force"].as<bool>();
  const std::vector<std::string> files = format == "peft"
                                             ? std::vector<std::string>{"adapter_config.json", "adapter_model.safetensors"}
                                             : std::vector<std::string>{"model.safetensors"};
  check_writable(dir, files, force);
  if (const int threads = vm["threads"].as<int>(); threads > 0) at::set_num_threads(threads);

  const std::string path = resolve_checkpoint(vm["checkpoint"].as<std::string>(), "export");
  CheckpointOverrides overrides;
  overrides.model = option_or_empty(vm, "model");
  overrides.tokenizer = option_or_empty(vm, "tokenizer");
  RestoredModel r = restore_model(path, overrides);
  const std::string model_arg = r.options["model"].as<std::string>();
  model::Backbone& backbone = *r.model.backbone;
  log::info("export {}: step {}, method {}, backbone {}", path, r.state.step, r.state.method, model_arg);

  if (format == "peft") {
    PeftLayout layout;
    try {
      layout = peft_layout(r.methods, backbone, r.trainables, r.options, model_arg);
    } catch (const UsageError& e) {
      usage(std::string(e.what()) + "; --format merged writes the merged weights (" +
            fmt::format("{}", fmt::join(peft::Registry::global().mergeable(), ", ")) + ")");
    }
    std::map<std::string, at::Tensor> ours;
    for (const auto& t : r.trainables) ours[t.name] = t.tensor.detach();
    NamedTensors tensors;
    for (const auto& t : layout.tensors) tensors.emplace_back(t.key, ours.at(t.ours).reshape(t.shape));
    const std::string weights = (fs::path(dir) / files[1]).string();
    model::save_safetensors(weights, tensors, {{"format", "pt"}});
    dist::replace_file_atomically(dir, files[0], layout.config.dump(2) + "\n");
    int64_t values = 0;
    for (const auto& [name, t] : tensors) values += t.numel();
    log::info("wrote {} ({} tensors, {} values, {}) and {}", weights, tensors.size(), with_commas(values),
              human_bytes(static_cast<int64_t>(fs::file_size(weights))), files[0]);
    return 0;
  }

  r.methods.merge(backbone);  // UsageError naming the first method that cannot merge
  NamedTensors tensors;
  for (const auto& [name, t] : backbone.named_parameters()) tensors.emplace_back(name, t.detach());
  auto metadata = model::config_metadata(backbone.config());
  metadata["format"] = "pt";
  metadata["deltatune_checkpoint"] = path;
  metadata["deltatune_method"] = r.state.method;
  metadata["deltatune_step"] = std::to_string(r.state.step);
  const std::string weights = (fs::path(dir) / files[0]).string();
  model::save_safetensors(weights, tensors, metadata);
  log::info("wrote {} ({} tensors, {} parameters, {}): {} merged into {}", weights, tensors.size(),
            with_commas(r.backbone_params), human_bytes(static_cast<int64_t>(fs::file_size(weights))), r.state.method,
            model_arg);
  return 0;
}

}  // namespace

Subcommand export_subcommand() {
  Subcommand sub;
  sub.name = "export";
  sub.summary = "write an HF PEFT adapter or merged weights (safetensors) from a checkpoint";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    desc.add_options()
        ("checkpoint", po::value<std::string>(), "checkpoint file, or train's --out directory (its latest checkpoint)")
        ("format", po::value<std::string>()->default_value("merged"),
         "peft: HF PEFT adapter_config.json + adapter_model.safetensors (lora, ia3, prompt) | merged: the backbone "
         "with the method merged, model.safetensors (full, lora, ia3, fish, dsee)")
        ("out", po::value<std::string>(), "directory to write the files to (created)")
        ("force", po::bool_switch(), "replace files that already exist in --out")
        ("model", po::value<std::string>(), "the backbone, when it moved (default: the checkpoint's --model); "
         "its sha256 must equal the recorded one")
        ("tokenizer", po::value<std::string>(), "tokenizer file (default: the checkpoint's; T5 label words need it)");
  };
  sub.positional = {"checkpoint"};
  sub.run = run_export;
  return sub;
}

}  // namespace dt::launch
