// launch/export.cpp — `deltatune export CKPT --format peft|merged --out DIR`: a checkpoint's model in
// the files other tools read.
//
// Design note: the model is rebuilt from the checkpoint (launch/from_checkpoint.h), then written as
//   * --format peft: an HF PEFT adapter directory — adapter_config.json + adapter_model.safetensors —
//     for the methods PEFT has a format for (lora, ia3, prompt), with PEFT's key names: our trainable
//     names already are the HF module names, so "<module>.lora_A.weight" becomes
//     "base_model.model.<module>.lora_A.weight" (BERT's encoder sits under "bert." in HF's BertFor*
//     models). (IA)^3's vectors go where PEFT keeps them: k/v as [out, 1] on the projection, the FFN
//     one as [1, d_ff] on the FFN's output linear (PEFT's feedforward_modules: it scales that linear's
//     input, which is our intermediate activation). The task head is PEFT's modules_to_save.
//     target_modules lists, per adapted module, the shortest dotted suffix that matches no other module
//     of the model (PEFT matches `name == t or name.endswith("." + t)`), so PEFT adapts exactly ours.
//   * --format merged: every method merged into the backbone (MethodSet::merge: full, lora, ia3, fish,
//     dsee) and the backbone's parameters, task head included, written as one safetensors file with
//     the HF names and dtypes and the config keys in __metadata__ (model/load.h reads it back).
// Files are written atomically (temp + rename) and an existing file is replaced only with --force.
// export is a single process: under a launcher with more than one rank it refuses to start.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "launch/cli.h"
#include "launch/from_checkpoint.h"
#include "launch/session.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "util/error.h"
#include "util/format.h"
#include "util/log.h"

namespace fs = std::filesystem;

namespace dt::launch {
namespace {

using nlohmann::json;
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

[[noreturn]] void usage(const std::string& what) { throw_usage_error("deltatune export: " + what); }

bool matches(const std::string& module, const std::string& target) {
  return module == target ||
         (module.size() > target.size() && module.compare(module.size() - target.size(), target.size(), target) == 0 &&
          module[module.size() - target.size() - 1] == '.');
}

// For each module of `adapted`, the shortest dotted suffix that matches no module outside `adapted`.
std::set<std::string> target_suffixes(const std::set<std::string>& adapted, const std::set<std::string>& all) {
  std::set<std::string> out;
  for (const auto& m : adapted) {
    std::string suffix;
    for (size_t end = m.size();;) {
      const size_t dot = m.rfind('.', end - 1);
      suffix = dot == std::string::npos ? m : m.substr(dot + 1);
      bool clash = false;
      for (const auto& other : all) clash = clash || (!adapted.count(other) && matches(other, suffix));
      if (!clash || dot == std::string::npos) break;
      end = dot;
    }
    out.insert(suffix);  // the whole name at worst, which matches only itself
  }
  return out;
}

// ---- HF PEFT adapter ---------------------------------------------------------------------------------

struct PeftAdapter {
  json config;
  NamedTensors tensors;
};

// HF module names of our parameters (BERT: HF's BertFor* keep the encoder under "bert.").
std::string hf_name(const model::ModelConfig& config, const std::string& name) {
  const bool head = name.rfind("classifier.", 0) == 0 || name.rfind("score.", 0) == 0;
  return config.arch == model::Arch::Bert && !head ? "bert." + name : name;
}

std::string module_of(const std::string& param) { return param.substr(0, param.rfind('.')); }

// Every module of the HF model (each dotted prefix of a parameter name), for suffix matching.
std::set<std::string> hf_modules(const model::Backbone& backbone) {
  std::set<std::string> out;
  for (const auto& [name, tensor] : backbone.named_parameters()) {
    const std::string hf = hf_name(backbone.config(), name);
    for (size_t pos = hf.find('.'); pos != std::string::npos; pos = hf.find('.', pos + 1)) out.insert(hf.substr(0, pos));
  }
  return out;
}

json number(double v) { return v == std::floor(v) && std::abs(v) < 1e15 ? json(static_cast<int64_t>(v)) : json(v); }

PeftAdapter peft_adapter(const RestoredModel& r, const std::string& base_model) {
  const auto& methods = r.methods.methods();
  std::string names;
  for (const auto& m : methods) names += (names.empty() ? "" : "+") + m->name();
  if (methods.size() != 1) {
    usage("an HF PEFT adapter holds one method, and this checkpoint's --method is " + names +
          "; --format merged writes the merged weights when every method can merge");
  }
  const std::string method = methods.front()->name();
  if (method != "lora" && method != "ia3" && method != "prompt") {
    usage("method '" + method + "' has no HF PEFT adapter format (--format peft: lora, ia3, prompt); "
          "--format merged writes merged weights for full, lora, ia3, fish, dsee");
  }
  const model::Backbone& backbone = *r.model.backbone;
  const model::ModelConfig& config = backbone.config();
  const bool prompt_learning = method == "prompt";
  // PEFT wraps the transformers model in a tuner model for LoRA/IA3 ("base_model.model."), not for prompts.
  const std::string prefix = prompt_learning ? "base_model." : "base_model.model.";

  PeftAdapter out;
  json& c = out.config;
  c["task_type"] = config.arch == model::Arch::T5 ? "SEQ_2_SEQ_LM" : "SEQ_CLS";
  c["base_model_name_or_path"] = base_model;
  c["revision"] = nullptr;
  c["inference_mode"] = true;
  std::set<std::string> head_modules;
  for (const auto& t : r.trainables) {
    if (t.method != "head") continue;
    out.tensors.emplace_back(prefix + t.name, t.tensor.detach());
    head_modules.insert(module_of(t.name));
  }
  c["modules_to_save"] = head_modules.empty() ? json(nullptr) : json(head_modules);

  const auto all = hf_modules(backbone);
  if (method == "lora") {
    std::set<std::string> adapted;
    for (const auto& t : r.trainables) {
      if (t.method != "lora") continue;
      const std::string hf = hf_name(config, t.name);  // <module>.lora_A.weight
      out.tensors.emplace_back(prefix + hf, t.tensor.detach());
      adapted.insert(module_of(module_of(hf)));
    }
    c["peft_type"] = "LORA";
    c["r"] = r.options["lora.r"].as<int64_t>();
    c["lora_alpha"] = number(r.options["lora.alpha"].as<double>());
    c["lora_dropout"] = 0.0;
    c["target_modules"] = target_suffixes(adapted, all);
    c["fan_in_fan_out"] = false;
    c["bias"] = "none";
    c["init_lora_weights"] = true;
    c["layers_to_transform"] = nullptr;
    c["layers_pattern"] = nullptr;
    c["rank_pattern"] = json::object();
    c["alpha_pattern"] = json::object();
    c["use_rslora"] = false;
    c["use_dora"] = false;
  } else if (method == "ia3") {
    // Where PEFT keeps each vector: k/v on the projection ([out, 1]), the FFN's on its output linear ([1, d_ff]).
    std::map<std::string, std::string> ffn_output;  // FFN path -> output linear's module
    for (const auto& s : model::describe_sites(config)) {
      if (s.kind == model::SiteKind::FfnOutput) ffn_output[module_of(s.name)] = module_of(s.weight);
    }
    std::map<std::string, const at::Tensor*> values;
    for (const auto& t : r.trainables) values[t.name] = &t.tensor;
    std::set<std::string> adapted, feedforward;
    for (const auto& s : model::describe_sites(config)) {
      auto it = values.find(s.name + ".ia3_l");
      if (it == values.end()) continue;
      const at::Tensor l = it->second->detach();
      const bool ffn = s.kind == model::SiteKind::FfnIntermediate;
      const std::string module = hf_name(config, ffn ? ffn_output.at(module_of(s.name)) + ".weight" : s.weight);
      out.tensors.emplace_back(prefix + module_of(module) + ".ia3_l", ffn ? l.unsqueeze(0) : l.unsqueeze(1));
      adapted.insert(module_of(module));
      if (ffn) feedforward.insert(module_of(module));
    }
    const auto ff_suffixes = target_suffixes(feedforward, all);
    auto targets = target_suffixes(adapted, all);
    targets.insert(ff_suffixes.begin(), ff_suffixes.end());
    c["peft_type"] = "IA3";
    c["target_modules"] = targets;
    c["feedforward_modules"] = ff_suffixes;
    c["fan_in_fan_out"] = false;
    c["init_ia3_weights"] = true;
  } else {
    const at::Tensor* embedding = nullptr;
    for (const auto& t : r.trainables) {
      if (t.name == "prompt.embedding") embedding = &t.tensor;
    }
    DT_CHECK(embedding, "prompt: no 'prompt.embedding' trainable");
    out.tensors.emplace_back("prompt_embeddings", embedding->detach());
    c["peft_type"] = "PROMPT_TUNING";
    c["num_virtual_tokens"] = embedding->size(0);
    c["token_dim"] = embedding->size(1);
    c["num_transformer_submodules"] = 1;  // our soft tokens go to the (encoder) input only
    c["num_attention_heads"] = config.num_heads;
    c["num_layers"] = config.num_layers;
    c["prompt_tuning_init"] = "RANDOM";  // (sampled vocabulary rows; PEFT only needs the values)
    c["prompt_tuning_init_text"] = nullptr;
    c["tokenizer_name_or_path"] = nullptr;
  }
  return out;
}

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
    const PeftAdapter adapter = peft_adapter(r, model_arg);
    const std::string weights = (fs::path(dir) / files[1]).string();
    model::save_safetensors(weights, adapter.tensors, {{"format", "pt"}});
    dist::replace_file_atomically(dir, files[0], adapter.config.dump(2) + "\n");
    int64_t values = 0;
    for (const auto& [name, t] : adapter.tensors) values += t.numel();
    log::info("wrote {} ({} tensors, {} values, {}) and {}", weights, adapter.tensors.size(), with_commas(values),
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
