// peft/s3delta/structure.cpp — the structure file: JSON that `search` writes and `train --structure` reads.
//
// {"format": "deltatune-s3delta-structure/1",
//  "backbone": {"name", "config": {HF config keys}, "params", "weights_sha256"},
//  "search_space": {"kinds", "lora_r", "lora_alpha", "bottleneck", "candidates", "params"},
//  "budget": {"fraction", "params"}, "selection": "...", "search": {...},
//  "total_params": T,
//  "modules": [{"name", "kind", "params", "p", "alpha"}, ...],          chosen, in search-space order
//  "candidates": [{"name", "kind", "params", "p", "alpha", "chosen"}, ...]}   every candidate (optional)
// Only format, backbone.config, search_space's module options, modules and total_params are needed to
// retrain; a hand-written file may name any candidates.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "model/load.h"
#include "peft/s3delta/s3delta.h"
#include "util/error.h"
#include "util/hash.h"

namespace dt::peft::s3delta {

namespace {

constexpr const char* kFormat = "deltatune-s3delta-structure/1";

nlohmann::ordered_json module_json(const StructureModule& m, bool with_chosen) {
  nlohmann::ordered_json j = {{"name", m.name}, {"kind", m.kind}, {"params", m.params}, {"p", m.p}, {"alpha", m.alpha}};
  if (with_chosen) j["chosen"] = m.chosen;
  return j;
}

}  // namespace

int64_t Structure::total_params() const {
  int64_t n = 0;
  for (const auto& m : modules) n += m.params;
  return n;
}

std::string structure_json(const Structure& s) {
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["method"] = "s3delta";
  nlohmann::ordered_json config(nlohmann::ordered_json::value_t::object);
  for (const auto& [k, v] : s.backbone_config) config[k] = v;
  j["backbone"] = {{"name", s.backbone_name}, {"config", config}, {"params", s.backbone_params},
                   {"weights_sha256", s.weights_sha256}};
  int64_t space_params = 0;
  for (const auto& c : s.candidates) space_params += c.params;
  j["search_space"] = {{"kinds", kinds_text(s.space.kinds)}, {"lora_r", s.space.lora_r},
                       {"lora_alpha", s.space.lora_alpha}, {"bottleneck", s.space.bottleneck},
                       {"candidates", s.candidates.size()}, {"params", space_params}};
  j["budget"] = {{"fraction", s.budget_fraction}, {"params", s.budget_params}};
  j["selection"] = "greedy by p descending (ties: search-space order), each module taken while it fits: "
                   "total_params <= budget.params and every module left out is larger than what remains";
  nlohmann::ordered_json search(nlohmann::ordered_json::value_t::object);
  for (const auto& [k, v] : s.search) search[k] = v;
  j["search"] = search;
  j["total_params"] = s.total_params();
  j["modules"] = nlohmann::ordered_json::array();
  for (const auto& m : s.modules) j["modules"].push_back(module_json(m, false));
  j["candidates"] = nlohmann::ordered_json::array();
  for (const auto& c : s.candidates) j["candidates"].push_back(module_json(c, true));
  return j.dump(1) + "\n";
}

Structure read_structure(const std::string& path) {
  auto refuse = [&](const std::string& what) -> void {
    throw_usage_error("--structure " + path + ": " + what);
  };
  std::ifstream in(path);
  if (!in) refuse("cannot read the file");
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    refuse("not a JSON object (a structure file is what `deltatune search --method s3delta --out FILE` writes)");
  }
  Structure s;
  s.path = path;
  try {
    if (j.value("format", std::string()) != kFormat) {
      refuse("format is '" + j.value("format", std::string()) + "', expected '" + kFormat + "'");
    }
    const auto& backbone = j.at("backbone");
    s.backbone_name = backbone.value("name", std::string());
    for (const auto& [k, v] : backbone.at("config").items()) s.backbone_config[k] = v.get<std::string>();
    s.backbone_params = backbone.value("params", int64_t{0});
    s.weights_sha256 = backbone.value("weights_sha256", std::string());
    const auto& space = j.at("search_space");
    s.space.kinds = parse_kinds("structure search_space.kinds", space.at("kinds").get<std::string>());
    s.space.lora_r = space.at("lora_r").get<int64_t>();
    s.space.lora_alpha = space.at("lora_alpha").get<double>();
    s.space.bottleneck = space.at("bottleneck").get<int64_t>();
    if (s.space.lora_r <= 0 || s.space.bottleneck <= 0) refuse("search_space.lora_r and .bottleneck must be positive");
    if (j.contains("budget")) {
      s.budget_fraction = j["budget"].value("fraction", 0.0);
      s.budget_params = j["budget"].value("params", int64_t{0});
    }
    if (j.contains("search")) {
      for (const auto& [k, v] : j["search"].items()) s.search[k] = v.is_string() ? v.get<std::string>() : v.dump();
    }
    auto module = [&](const nlohmann::json& m) {
      StructureModule out;
      out.name = m.at("name").get<std::string>();
      out.kind = m.at("kind").get<std::string>();
      out.params = m.at("params").get<int64_t>();
      out.p = m.value("p", 0.0);
      out.alpha = m.value("alpha", 0.0);
      out.chosen = m.value("chosen", true);
      parse_kinds("structure module '" + out.name + "' kind", out.kind);
      return out;
    };
    std::set<std::string> names;
    for (const auto& m : j.at("modules")) {
      s.modules.push_back(module(m));
      if (!names.insert(s.modules.back().name).second) refuse("module '" + s.modules.back().name + "' is listed twice");
    }
    if (j.contains("candidates")) {
      for (const auto& c : j["candidates"]) s.candidates.push_back(module(c));
    }
    const int64_t total = j.at("total_params").get<int64_t>();
    if (total != s.total_params()) {
      refuse(fmt::format("total_params is {}, but its modules add up to {}", total, s.total_params()));
    }
  } catch (const nlohmann::json::exception& e) {
    refuse(std::string("malformed: ") + e.what());
  }
  return s;
}

void write_structure(const Structure& s, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) throw_usage_error("--out " + path + ": cannot write '" + tmp + "'");
    out << structure_json(s);
    out.flush();
    if (!out) throw_usage_error("--out " + path + ": writing '" + tmp + "' failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw_usage_error("--out " + path + ": cannot rename '" + tmp + "' into place: " + ec.message());
}

std::string structure_id(const Structure& s) {
  std::string text = fmt::format("r={};alpha={};m={};", s.space.lora_r, s.space.lora_alpha, s.space.bottleneck);
  for (const auto& m : s.modules) text += m.name + ";";
  return fmt::format("{:016x}", fnv1a(text));
}

std::vector<Candidate> chosen_candidates(const Structure& s, const model::ModelConfig& config) {
  const auto current = model::config_metadata(config);
  if (current != s.backbone_config) {
    std::string diff;
    auto add = [&diff](const std::string& key, const std::string& a, const std::string& b) {
      diff += fmt::format("{}{} {} vs {}", diff.empty() ? "" : ", ", key, a, b);
    };
    auto value = [](const std::map<std::string, std::string>& m, const std::string& key) {
      auto it = m.find(key);
      return it == m.end() ? std::string("absent") : it->second;
    };
    if (value(current, "architecture") != value(s.backbone_config, "architecture")) {
      add("architecture", value(s.backbone_config, "architecture"), value(current, "architecture"));  // all differ
    } else {
      std::set<std::string> keys;
      for (const auto& [k, v] : s.backbone_config) keys.insert(k);
      for (const auto& [k, v] : current) keys.insert(k);
      for (const auto& k : keys) {
        if (value(s.backbone_config, k) != value(current, k)) add(k, value(s.backbone_config, k), value(current, k));
      }
    }
    throw_usage_error("--structure " + s.path + ": it was searched on backbone '" + s.backbone_name +
                      "', and --model " + config.name + " is another one (" + diff + ")");
  }
  SpaceOptions all = s.space;  // every kind: a hand-written file may name any candidate
  all.kinds = {Kind::Lora, Kind::Bitfit, Kind::Adapter, Kind::LnGain};
  const std::vector<Candidate> space = search_space(config, all);
  std::map<std::string, const StructureModule*> wanted;
  for (const auto& m : s.modules) wanted[m.name] = &m;
  std::vector<Candidate> out;
  for (const auto& c : space) {
    auto it = wanted.find(c.name);
    if (it == wanted.end()) continue;
    if (it->second->kind != kind_name(c.kind) || it->second->params != c.params()) {
      throw_usage_error(fmt::format("--structure {}: module '{}' is recorded as {} of {} parameters, but on {} it is {} "
                                    "of {}", s.path, c.name, it->second->kind, it->second->params, config.name,
                                    kind_name(c.kind), c.params()));
    }
    out.push_back(c);
    wanted.erase(it);
  }
  if (!wanted.empty()) {
    throw_usage_error("--structure " + s.path + ": module '" + wanted.begin()->first + "' is not a candidate position of " +
                      config.name + " (" + std::to_string(wanted.size()) + " unknown)");
  }
  return out;
}

}  // namespace dt::peft::s3delta
