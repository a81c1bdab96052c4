// model/load.cpp — backbones from names and weights files (see load.h).
#include "model/load.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "model/device.h"
#include "model/llama.h"
#include "model/llama2c.h"
#include "model/safetensors.h"
#include "model/t5.h"
#include "util/error.h"

namespace dt::model {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// Tensors HF files carry that are not parameters of our backbones (buffers, tied aliases,
// pretraining heads, a task head when the backbone is loaded without one); dropped when the
// backbone has no parameter of that name.
bool ignorable(const std::string& name) {
  return is_task_head(name) || ends_with(name, "rotary_emb.inv_freq") || ends_with(name, "position_ids") ||
         name == "encoder.embed_tokens.weight" || name == "decoder.embed_tokens.weight" ||
         starts_with(name, "cls.");
}

std::string shape_text(at::IntArrayRef s) { return c10::str(s); }

// The weights are about to be replaced: skip the random init (it would touch every page).
std::unique_ptr<Backbone> make_llama_uninitialized(const ModelConfig& config, int64_t num_labels) {
  return std::make_unique<LlamaBackbone>(config, num_labels, /*random_init=*/false);
}

// ---- configs from HF config.json keys -----------------------------------------------------------

// The config keys of a safetensors file: its __metadata__, else config.json beside it.
nlohmann::json config_json(const SafetensorsFile& file) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : file.metadata()) {
    // Metadata values are strings; numbers and booleans are parsed back, other text stays text.
    try {
      j[k] = nlohmann::json::parse(v);
    } catch (const nlohmann::json::exception&) {
      j[k] = v;
    }
  }
  if (j.contains("hidden_size") || j.contains("d_model")) return j;
  const std::string& path = file.path();
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  std::ifstream in(dir + "/config.json");
  if (!in)
    throw_usage_error(path + ": no model config: neither the file's __metadata__ nor " + dir +
                      "/config.json gives the architecture's sizes (HF config.json keys)");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw_usage_error(dir + "/config.json: not valid JSON: " + e.what());
  }
}

struct ConfigReader {
  const nlohmann::json& j;
  std::string source;
  int64_t integer(const std::string& key) const {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer())
      throw_usage_error(source + ": model config lacks the integer '" + key + "'");
    return it->get<int64_t>();
  }
  int64_t integer(const std::string& key, int64_t fallback) const {
    return j.contains(key) ? integer(key) : fallback;
  }
  double number(const std::string& key, double fallback) const {
    auto it = j.find(key);
    if (it == j.end()) return fallback;
    if (!it->is_number()) throw_usage_error(source + ": model config '" + key + "' is not a number");
    return it->get<double>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    auto it = j.find(key);
    if (it == j.end()) return fallback;
    if (!it->is_boolean()) throw_usage_error(source + ": model config '" + key + "' is not a boolean");
    return it->get<bool>();
  }
  std::string text(const std::string& key, const std::string& fallback) const {
    auto it = j.find(key);
    if (it == j.end()) return fallback;
    if (!it->is_string()) throw_usage_error(source + ": model config '" + key + "' is not a string");
    return it->get<std::string>();
  }
};

ModelConfig llama_config(const ConfigReader& r) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.vocab_size = r.integer("vocab_size");
  c.d_model = r.integer("hidden_size");
  c.d_ff = r.integer("intermediate_size");
  c.num_layers = r.integer("num_hidden_layers");
  c.num_heads = r.integer("num_attention_heads");
  c.num_kv_heads = r.integer("num_key_value_heads", c.num_heads);
  if (c.num_heads <= 0 || c.d_model % c.num_heads != 0)
    throw_usage_error(r.source + ": hidden_size " + std::to_string(c.d_model) +
                      " is not a multiple of num_attention_heads " + std::to_string(c.num_heads));
  c.d_kv = c.d_model / c.num_heads;
  c.max_seq_len = r.integer("max_position_embeddings", 2048);
  c.norm_eps = r.number("rms_norm_eps", 1e-6);
  c.rope_theta = r.number("rope_theta", 10000.0);
  // transformers 5 writes it under rope_parameters (with rope_type); only the default rotation exists here.
  if (auto rp = r.j.find("rope_parameters"); rp != r.j.end() && rp->is_object()) {
    const ConfigReader nested{*rp, r.source + " rope_parameters"};
    c.rope_theta = nested.number("rope_theta", c.rope_theta);
    const std::string type = nested.text("rope_type", "default");
    if (type != "default")
      throw_usage_error(r.source + ": rope_type '" + type + "' is not supported (only the default rotation)");
  }
  if (r.j.contains("head_dim") && r.integer("head_dim") != c.d_kv)
    throw_usage_error(r.source + ": head_dim " + std::to_string(r.integer("head_dim")) + " != hidden_size / " +
                      "num_attention_heads = " + std::to_string(c.d_kv) + " (not supported)");
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.gated_ffn = true;
  c.activation = "silu";
  return c;
}

ModelConfig t5_config(const ConfigReader& r) {
  ModelConfig c;
  c.arch = Arch::T5;
  c.vocab_size = r.integer("vocab_size");
  c.d_model = r.integer("d_model");
  c.d_ff = r.integer("d_ff");
  c.d_kv = r.integer("d_kv");
  c.num_heads = r.integer("num_heads");
  c.num_kv_heads = c.num_heads;
  c.num_layers = r.integer("num_layers");
  c.num_decoder_layers = r.integer("num_decoder_layers", c.num_layers);
  c.relative_attention_num_buckets = r.integer("relative_attention_num_buckets", 32);
  c.relative_attention_max_distance = r.integer("relative_attention_max_distance", 128);
  c.norm_eps = r.number("layer_norm_epsilon", 1e-6);
  const std::string ffn = r.text("feed_forward_proj", "relu");
  c.gated_ffn = starts_with(ffn, "gated-");
  c.activation = c.gated_ffn ? ffn.substr(6) : ffn;
  if (c.activation == "gelu" && c.gated_ffn) c.activation = "gelu_new";  // HF's alias for v1.1
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", true);
  return c;
}

ModelConfig bert_config(const ConfigReader& r) {
  ModelConfig c;
  c.arch = Arch::Bert;
  c.vocab_size = r.integer("vocab_size");
  c.d_model = r.integer("hidden_size");
  c.d_ff = r.integer("intermediate_size");
  c.num_heads = r.integer("num_attention_heads");
  c.num_kv_heads = c.num_heads;
  c.num_layers = r.integer("num_hidden_layers");
  c.d_kv = c.num_heads > 0 ? c.d_model / c.num_heads : 0;
  c.max_position_embeddings = r.integer("max_position_embeddings", 512);
  c.type_vocab_size = r.integer("type_vocab_size", 2);
  c.activation = r.text("hidden_act", "gelu");
  c.norm_eps = r.number("layer_norm_eps", 1e-12);
  c.tie_word_embeddings = false;
  return c;
}

// The architecture from the tensor names, the sizes from the config (metadata or config.json).
ModelConfig safetensors_config(const SafetensorsFile& file, const std::string& path) {
  bool bert_prefix = false;
  for (const auto& e : file.entries()) bert_prefix |= starts_with(e.name, "bert.");
  const nlohmann::json j = config_json(file);
  ConfigReader reader{j, path};
  ModelConfig config;
  if (file.contains("model.embed_tokens.weight")) {
    config = llama_config(reader);
  } else if (file.contains("shared.weight")) {
    config = t5_config(reader);
    // Keep a bf16 file's dtype: the backbone's tensors are then the mapped pages themselves (shared by
    // the node's ranks, no per-rank float32 copy); other dtypes are converted to float32 as before.
    if (file.entry("shared.weight").dtype == at::kBFloat16) config.dtype = at::kBFloat16;
  } else if (bert_prefix || file.contains("embeddings.word_embeddings.weight")) {
    config = bert_config(reader);
  } else {
    throw_usage_error(path + ": cannot tell the architecture: no model.embed_tokens.weight (Llama), "
                      "shared.weight (T5) or embeddings.word_embeddings.weight (BERT)");
  }
  config.name = path;
  return config;
}

std::unique_ptr<Backbone> load_safetensors(const std::string& path, int64_t num_labels) {
  SafetensorsFile file = SafetensorsFile::open(path);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  bool bert_prefix = false;
  for (const auto& e : file.entries()) bert_prefix |= starts_with(e.name, "bert.");
  for (const auto& e : file.entries()) {
    // HF's BertFor* files put the encoder under "bert."; our BERT backbone is the bare BertModel.
    std::string name = bert_prefix && starts_with(e.name, "bert.") ? e.name.substr(5) : e.name;
    tensors.emplace_back(name, file.tensor(e.name));
  }
  const ModelConfig config = safetensors_config(file, path);
  std::unique_ptr<Backbone> backbone;
  try {
    backbone = config.arch == Arch::Llama ? make_llama_uninitialized(config, num_labels)
               : config.arch == Arch::T5  ? make_t5_uninitialized(config, num_labels)
                                          : make_backbone(config, num_labels);
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw_usage_error(path + ": inconsistent model config: " + e.what());
  }
  load_weights(*backbone, tensors, path);
  return backbone;
}

}  // namespace

std::unique_ptr<Backbone> make_backbone(const ModelConfig& config, int64_t num_labels) {
  switch (config.arch) {
    case Arch::Llama: return make_llama(config, num_labels);
    case Arch::T5: return make_t5(config, num_labels);
    case Arch::Bert: return make_bert(config, num_labels);
  }
  DT_FAIL("make_backbone: unknown architecture of '" + config.name + "'");
}

void load_weights(Backbone& backbone, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                  const std::string& source) {
  std::map<std::string, at::Tensor> given;
  for (const auto& [name, t] : tensors) given[name] = t;
  std::vector<std::string> missing, wrong_shape;
  std::set<std::string> known;
  auto params = backbone.named_parameters();
  for (auto& [name, p] : params) {
    known.insert(name);
    auto it = given.find(name);
    if (it == given.end()) {
      // HF's *ForSequenceClassification files have the task head and no LM head (unused by classification).
      const bool classifier_file = given.count("score.weight") || given.count("classifier.weight");
      if (!is_task_head(name) && !(name == "lm_head.weight" && classifier_file)) missing.push_back(name);
      continue;
    }
    if (it->second.sizes() != p.sizes())
      wrong_shape.push_back(name + " " + shape_text(it->second.sizes()) + " (expected " +
                            shape_text(p.sizes()) + ")");
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, t] : given)
    if (!known.count(name) && !ignorable(name)) unexpected.push_back(name);

  if (!missing.empty() || !wrong_shape.empty() || !unexpected.empty()) {
    std::ostringstream msg;
    msg << source << ": weights do not match the " << backbone.config().name << " backbone:";
    auto list = [&](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      msg << " " << what << " (" << names.size() << "):";
      for (size_t i = 0; i < names.size() && i < 20; ++i) msg << (i ? ", " : " ") << names[i];
      if (names.size() > 20) msg << ", ...";
      msg << ";";
    };
    list("missing tensors", missing);
    list("wrong shape", wrong_shape);
    list("unexpected tensors", unexpected);
    throw_usage_error(msg.str());
  }
  for (auto& [name, p] : params) {
    auto it = given.find(name);
    if (it == given.end()) continue;
    const at::Tensor& v = it->second;
    // Same dtype and device: install the view itself (zero-copy); otherwise convert once.
    p.set_data(v.scalar_type() == p.scalar_type() && v.device() == p.device()
                   ? v.detach()
                   : v.detach().to(p.device(), p.scalar_type()));
  }
}

std::map<std::string, std::string> config_metadata(const ModelConfig& c) {
  std::map<std::string, std::string> m;
  auto i = [](int64_t v) { return std::to_string(v); };
  auto f = [](double v) { return nlohmann::json(v).dump(); };
  switch (c.arch) {
    case Arch::Llama:
      m = {{"vocab_size", i(c.vocab_size)}, {"hidden_size", i(c.d_model)},
           {"intermediate_size", i(c.d_ff)}, {"num_hidden_layers", i(c.num_layers)},
           {"num_attention_heads", i(c.num_heads)}, {"num_key_value_heads", i(c.num_kv_heads)},
           {"max_position_embeddings", i(c.max_seq_len)}, {"rms_norm_eps", f(c.norm_eps)},
           {"rope_theta", f(c.rope_theta)},
           {"tie_word_embeddings", c.tie_word_embeddings ? "true" : "false"}};
      break;
    case Arch::T5:
      m = {{"vocab_size", i(c.vocab_size)}, {"d_model", i(c.d_model)}, {"d_ff", i(c.d_ff)},
           {"d_kv", i(c.d_kv)}, {"num_heads", i(c.num_heads)}, {"num_layers", i(c.num_layers)},
           {"num_decoder_layers", i(c.num_decoder_layers)},
           {"relative_attention_num_buckets", i(c.relative_attention_num_buckets)},
           {"relative_attention_max_distance", i(c.relative_attention_max_distance)},
           {"layer_norm_epsilon", f(c.norm_eps)},
           {"feed_forward_proj",
            c.gated_ffn ? "gated-" + (c.activation == "gelu_new" ? std::string("gelu") : c.activation)
                        : c.activation},
           {"tie_word_embeddings", c.tie_word_embeddings ? "true" : "false"}};
      break;
    case Arch::Bert:
      m = {{"vocab_size", i(c.vocab_size)}, {"hidden_size", i(c.d_model)},
           {"intermediate_size", i(c.d_ff)}, {"num_attention_heads", i(c.num_heads)},
           {"num_hidden_layers", i(c.num_layers)},
           {"max_position_embeddings", i(c.max_position_embeddings)},
           {"type_vocab_size", i(c.type_vocab_size)}, {"hidden_act", c.activation},
           {"layer_norm_eps", f(c.norm_eps)}};
      break;
  }
  m["architecture"] = c.arch == Arch::Llama ? "llama" : c.arch == Arch::T5 ? "t5" : "bert";
  return m;
}

std::string resolve_model_path(const std::string& path_or_name) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path_or_name, ec)) return path_or_name;
  const std::string file = path_or_name + (ends_with(path_or_name, "/") ? "" : "/") + "model.safetensors";
  if (!std::filesystem::exists(file, ec))
    throw_usage_error("--model " + path_or_name + ": a directory without model.safetensors (a Hugging Face "
                      "model directory holds model.safetensors and config.json)");
  return file;
}

ModelConfig read_model_config(const std::string& path_or_name) {
  const std::string path = resolve_model_path(path_or_name);
  if (ends_with(path, ".bin")) return read_llama2c_config(path);
  if (ends_with(path, ".safetensors")) return safetensors_config(SafetensorsFile::open(path), path);
  return named_config(path);
}

std::unique_ptr<Backbone> load_backbone(const std::string& path_or_name_or_dir, int64_t num_labels) {
  const std::string path_or_name = resolve_model_path(path_or_name_or_dir);
  if (ends_with(path_or_name, ".bin")) {
    Llama2cModel m = read_llama2c(path_or_name);
    auto backbone = make_llama_uninitialized(m.config, num_labels);
    load_weights(*backbone, m.tensors, path_or_name);
    return backbone;
  }
  if (ends_with(path_or_name, ".safetensors")) return load_safetensors(path_or_name, num_labels);
  return make_backbone(named_config(path_or_name), num_labels);
}

}  // namespace dt::model
