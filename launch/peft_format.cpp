// launch/peft_format.cpp — see peft_format.h.
#include "launch/peft_format.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "model/device.h"
#include "model/hooks.h"
#include "model/safetensors.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace dt::launch {
namespace {

using nlohmann::json;

bool matches(const std::string& module, const std::string& target) {
  return module == target ||
         (module.size() > target.size() && module.compare(module.size() - target.size(), target.size(), target) == 0 &&
          module[module.size() - target.size() - 1] == '.');
}

// For each module of `adapted`, the shortest dotted suffix that matches no module outside `adapted`
// (PEFT matches `name == t or name.endswith("." + t)`), so PEFT adapts exactly ours.
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

// HF module names of our parameters (BERT: HF's BertFor* keep the encoder under "bert.").
std::string hf_name(const model::ModelConfig& config, const std::string& name) {
  return config.arch == model::Arch::Bert && !model::is_task_head(name) ? "bert." + name : name;
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

std::vector<int64_t> shape_of(const at::Tensor& t) { return t.sizes().vec(); }

const std::map<std::string, std::string>& peft_types() {
  static const std::map<std::string, std::string> types = {
      {"lora", "LORA"}, {"ia3", "IA3"}, {"prompt", "PROMPT_TUNING"}};
  return types;
}

}  // namespace

PeftLayout peft_layout(const peft::MethodSet& methods, const model::Backbone& backbone,
                       const std::vector<peft::Trainable>& trainables,
                       const boost::program_options::variables_map& options, const std::string& base_model) {
  std::string names;
  for (const auto& m : methods.methods()) names += (names.empty() ? "" : "+") + m->name();
  if (methods.methods().size() != 1) {
    throw_usage_error("an HF PEFT adapter holds one method (lora, ia3 or prompt), and this --method is " + names);
  }
  const std::string method = methods.methods().front()->name();
  if (!peft_types().count(method)) {
    throw_usage_error("method '" + method + "' has no HF PEFT adapter format (lora, ia3, prompt)");
  }
  const model::ModelConfig& config = backbone.config();
  // PEFT wraps the transformers model in a tuner model for LoRA/IA3 ("base_model.model."), not for prompts.
  const std::string prefix = method == "prompt" ? "base_model." : "base_model.model.";

  PeftLayout out;
  out.method = method;
  json& c = out.config;
  c["peft_type"] = peft_types().at(method);
  c["task_type"] = config.arch == model::Arch::T5 ? "SEQ_2_SEQ_LM" : "SEQ_CLS";
  c["base_model_name_or_path"] = base_model;
  c["revision"] = nullptr;
  c["inference_mode"] = true;
  std::set<std::string> head_modules;
  for (const auto& t : trainables) {
    if (t.method != "head") continue;
    out.tensors.push_back({t.name, prefix + t.name, shape_of(t.tensor)});
    head_modules.insert(module_of(t.name));
  }
  c["modules_to_save"] = head_modules.empty() ? json(nullptr) : json(head_modules);

  const auto all = hf_modules(backbone);
  if (method == "lora") {
    std::set<std::string> adapted;
    for (const auto& t : trainables) {
      if (t.method != "lora") continue;
      const std::string hf = hf_name(config, t.name);  // <module>.lora_A.weight
      out.tensors.push_back({t.name, prefix + hf, shape_of(t.tensor)});
      adapted.insert(module_of(module_of(hf)));
    }
    c["r"] = options["lora.r"].as<int64_t>();
    c["lora_alpha"] = number(options["lora.alpha"].as<double>());
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
    std::map<std::string, std::string> ffn_output;  // FFN path -> output linear's module
    for (const auto& s : model::describe_sites(config)) {
      if (s.kind == model::SiteKind::FfnOutput) ffn_output[module_of(s.name)] = module_of(s.weight);
    }
    std::map<std::string, const at::Tensor*> values;
    for (const auto& t : trainables) values[t.name] = &t.tensor;
    std::set<std::string> adapted, feedforward;
    for (const auto& s : model::describe_sites(config)) {
      auto it = values.find(s.name + ".ia3_l");
      if (it == values.end()) continue;
      const int64_t n = it->second->numel();
      const bool ffn = s.kind == model::SiteKind::FfnIntermediate;
      const std::string module = module_of(hf_name(config, ffn ? ffn_output.at(module_of(s.name)) + ".weight" : s.weight));
      out.tensors.push_back({it->first, prefix + module + ".ia3_l", ffn ? std::vector<int64_t>{1, n}
                                                                       : std::vector<int64_t>{n, 1}});
      adapted.insert(module);
      if (ffn) feedforward.insert(module);
    }
    const auto ff_suffixes = target_suffixes(feedforward, all);
    auto targets = target_suffixes(adapted, all);
    targets.insert(ff_suffixes.begin(), ff_suffixes.end());
    c["target_modules"] = targets;
    c["feedforward_modules"] = ff_suffixes;
    c["fan_in_fan_out"] = false;
    c["init_ia3_weights"] = true;
  } else {
    const at::Tensor* embedding = nullptr;
    for (const auto& t : trainables) {
      if (t.name == "prompt.embedding") embedding = &t.tensor;
    }
    DT_CHECK(embedding, "prompt: no 'prompt.embedding' trainable");
    out.tensors.push_back({"prompt.embedding", "prompt_embeddings", shape_of(*embedding)});
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

int64_t load_peft_adapter(const std::string& dir, const PeftLayout& layout,
                          const std::vector<peft::Trainable>& trainables) {
  const std::string where = "--init-from '" + dir + "'";
  const fs::path config_path = fs::path(dir) / "adapter_config.json";
  const fs::path weights_path = fs::path(dir) / "adapter_model.safetensors";
  if (!fs::is_directory(dir)) throw_usage_error(where + ": not a directory (an HF PEFT adapter directory is expected)");
  for (const auto& p : {config_path, weights_path}) {
    if (!fs::is_regular_file(p)) {
      throw_usage_error(where + ": no " + p.filename().string() + " (an HF PEFT adapter directory holds "
                        "adapter_config.json and adapter_model.safetensors)");
    }
  }
  json config;
  try {
    std::ifstream f(config_path);
    config = json::parse(f);
  } catch (const json::exception& e) {
    throw_usage_error(config_path.string() + ": not valid JSON (" + e.what() + ")");
  }
  if (!config.is_object()) throw_usage_error(config_path.string() + ": not a JSON object");

  // ---- the same kind of adapter, with the hyper-parameters that change what the values mean --------
  const std::string want_type = layout.config.at("peft_type");
  const std::string type = config.value("peft_type", std::string("(none)"));
  if (type != want_type) {
    throw_usage_error(where + " is a PEFT " + type + " adapter, and --method " + layout.method + " reads " +
                      want_type + " adapters");
  }
  auto same = [&](const std::string& key, const std::string& option) {
    if (!config.contains(key) || config[key] != layout.config.at(key)) {
      throw_usage_error(where + ": adapter_config.json has " + key + " = " +
                        (config.contains(key) ? config[key].dump() : "(none)") + ", and this run's " + option +
                        " is " + layout.config.at(key).dump() + " (set " + option + " to the adapter's)");
    }
  };
  auto unset = [&](const std::string& key) {
    if (config.contains(key) && !config[key].is_null() && config[key] != false) {
      throw_usage_error(where + ": adapter_config.json has " + key + " = " + config[key].dump() +
                        ", which deltatune's " + layout.method + " does not implement");
    }
  };
  if (layout.method == "lora") {
    same("r", "--lora.r");
    same("lora_alpha", "--lora.alpha");
    for (const char* key : {"use_rslora", "use_dora", "fan_in_fan_out"}) unset(key);
    for (const char* key : {"rank_pattern", "alpha_pattern"}) {
      if (config.contains(key) && config[key].is_object() && !config[key].empty()) unset(key);
    }
  } else if (layout.method == "prompt") {
    same("num_virtual_tokens", "--prompt.length");
    if (config.value("num_transformer_submodules", 1) != 1) {
      throw_usage_error(where + ": num_transformer_submodules = " + config["num_transformer_submodules"].dump() +
                        " (soft tokens for the decoder too); deltatune's prompt tuning has encoder-input ones only");
    }
  }

  // ---- exactly the layout's tensors, with its shapes --------------------------------------------------
  const model::SafetensorsFile file = model::SafetensorsFile::open(weights_path.string());
  std::set<std::string> expected;
  for (const auto& t : layout.tensors) {
    expected.insert(t.key);
    if (!file.contains(t.key)) {
      throw_usage_error(where + ": the adapter has no '" + t.key + "' (this run's " + layout.method +
                        (model::is_task_head(t.ours)
                             ? " trains the task head, PEFT's modules_to_save"
                             : " trains '" + t.ours + "'") +
                        "): it was made for other target modules or another model");
    }
    if (file.entry(t.key).shape != t.shape) {
      throw_usage_error(where + ": '" + t.key + "' is " + c10::str(c10::IntArrayRef(file.entry(t.key).shape)) + ", and this run's is " +
                        c10::str(c10::IntArrayRef(t.shape)));
    }
  }
  for (const auto& e : file.entries()) {
    if (!expected.count(e.name)) {
      throw_usage_error(where + ": the adapter has '" + e.name + "', which this run does not train (other "
                        "target modules? --" + layout.method + " options differ from the adapter's)");
    }
  }

  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& t : trainables) by_name[t.name] = &t.tensor;
  c10::NoGradGuard no_grad;
  int64_t values = 0;
  for (const auto& t : layout.tensors) {
    at::Tensor target = *by_name.at(t.ours);
    target.copy_(file.tensor(t.key).reshape(target.sizes()));
    values += target.numel();
  }
  return values;
}

}  // namespace dt::launch
