// launch/inspect.cpp — `deltatune inspect CKPT`: what a checkpoint (or a weights file) holds.
//
// Design note: a checkpoint is summarized from its metadata and dataset headers alone (no tensor is
// read, so it is instant even for a T5-3B one); `--verify` additionally reads every dataset through
// its checksum. A directory means the checkpoint its `latest` names (else its newest). Weights files
// (.safetensors, llama2.c .bin) report tensor count, parameters and bytes per dtype.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "dist/checkpoint.h"
#include "launch/cli.h"
#include "model/llama2c.h"
#include "model/safetensors.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace dt::launch {
namespace {

using nlohmann::json;

bool is_hdf5(const std::string& path) {
  static const char kSignature[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  std::ifstream in(path, std::ios::binary);
  char head[8] = {};
  in.read(head, 8);
  return in.gcount() == 8 && std::equal(head, head + 8, kSignature);
}

// A directory: the checkpoint `latest` names, else the newest one.
std::string resolve_path(const std::string& path) {
  if (!fs::is_directory(path)) {
    if (!fs::exists(path)) throw_usage_error("deltatune inspect: '" + path + "' does not exist");
    return path;
  }
  std::ifstream in(path + "/latest");
  std::string latest;
  std::getline(in, latest);
  if (!latest.empty() && fs::exists(path + "/" + latest)) return path + "/" + latest;
  const auto all = dist::list_checkpoints(path);
  if (all.empty()) throw_usage_error("deltatune inspect: directory '" + path + "' holds no checkpoint");
  return all.front();
}

std::string human_bytes(int64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[64];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

// A few keys of the resolved config worth a glance (the whole INI is in --json and h5dump).
json config_summary(const std::string& ini) {
  json out = json::object();
  std::string section, line;
  std::istringstream in(ini);
  const std::vector<std::string> keys = {"model", "task", "method", "train.steps", "train.batch-size",
                                         "train.lr", "train.seed", "train.optimizer", "dist.backend"};
  while (std::getline(in, line)) {
    if (!line.empty() && line.front() == '[') {
      section = line.substr(1, line.size() - 2);
      continue;
    }
    const auto eq = line.find(" = ");
    if (eq == std::string::npos) continue;
    const std::string key = (section.empty() ? "" : section + ".") + line.substr(0, eq);
    if (std::find(keys.begin(), keys.end(), key) != keys.end()) out[key] = line.substr(eq + 3);
  }
  return out;
}

json checkpoint_json(const std::string& path, bool verify, bool list_datasets) {
  const dist::CheckpointInfo info = dist::inspect_checkpoint(path);
  const dist::CheckpointState& m = info.meta;
  json groups = json::object();
  for (const char* g : {"trainable", "optimizer", "indices", "rng", "meta"}) {
    groups[g] = {{"datasets", 0}, {"elements", 0}, {"raw_bytes", 0}, {"stored_bytes", 0},
                 {"bytes_per_dtype", json::object()}};
  }
  for (const auto& d : info.datasets) {
    json& g = groups[d.group];
    int64_t numel = 1;
    for (auto s : d.shape) numel *= s;
    g["datasets"] = g["datasets"].get<int64_t>() + 1;
    g["elements"] = g["elements"].get<int64_t>() + numel;
    g["raw_bytes"] = g["raw_bytes"].get<int64_t>() + d.raw_bytes;
    g["stored_bytes"] = g["stored_bytes"].get<int64_t>() + d.stored_bytes;
    json& per = g["bytes_per_dtype"];
    per[d.dtype] = per.value(d.dtype, int64_t{0}) + d.raw_bytes;
  }
  int64_t index_entries = 0;
  for (const auto& ix : m.indices) index_entries += ix.count;
  groups["indices"]["entries"] = index_entries;
  json j = {{"kind", "checkpoint"},
            {"path", path},
            {"file_bytes", info.file_bytes},
            {"step", m.step},
            {"epoch", m.epoch},
            {"sampler_position", m.sampler_position},
            {"world_size", m.world_size},
            {"lr", m.lr},
            {"schedule", m.schedule},
            {"method", m.method},
            {"optimizer", m.optimizer},
            {"backbone",
             {{"name", m.backbone.name},
              {"weights_sha256", m.backbone.weights_sha256},
              {"tensors_hash", m.backbone.tensors_hash},
              {"config", m.backbone.config}}},
            {"groups", groups},
            {"config_summary", config_summary(m.config_ini)},
            {"config", m.config_ini}};
  if (list_datasets) {
    json list = json::array();
    for (const auto& d : info.datasets) {
      list.push_back({{"group", d.group}, {"name", d.name}, {"dtype", d.dtype}, {"shape", d.shape},
                      {"raw_bytes", d.raw_bytes}, {"stored_bytes", d.stored_bytes}, {"chunks", d.chunks}});
    }
    j["datasets"] = list;
  }
  if (verify) {
    dist::read_checkpoint(path);  // throws naming the dataset that fails its checksum
    j["verified"] = true;
  }
  return j;
}

void print_checkpoint(const json& j) {
  const json& g = j["groups"];
  auto line = [&](const char* name, const char* what) {
    const json& x = g[name];
    std::string dtypes;
    for (const auto& [dtype, bytes] : x["bytes_per_dtype"].items()) {
      dtypes += (dtypes.empty() ? "" : ", ") + dtype + " " + human_bytes(bytes.get<int64_t>());
    }
    std::printf("  %-10s %4lld %-9s %12lld elements  %10s raw  %10s stored%s%s%s\n", name,
                static_cast<long long>(x["datasets"].get<int64_t>()), what,
                static_cast<long long>(x["elements"].get<int64_t>()), human_bytes(x["raw_bytes"]).c_str(),
                human_bytes(x["stored_bytes"]).c_str(), dtypes.empty() ? "" : "  (", dtypes.c_str(),
                dtypes.empty() ? "" : ")");
  };
  std::printf("checkpoint %s: %s\n", j["path"].get<std::string>().c_str(),
              human_bytes(j["file_bytes"].get<int64_t>()).c_str());
  std::printf("  step %lld (epoch %lld, sampler position %lld), written by %lld rank(s), last lr %.6g\n",
              static_cast<long long>(j["step"].get<int64_t>()), static_cast<long long>(j["epoch"].get<int64_t>()),
              static_cast<long long>(j["sampler_position"].get<int64_t>()),
              static_cast<long long>(j["world_size"].get<int64_t>()), j["lr"].get<double>());
  std::printf("  method     %s\n  optimizer  %s   schedule %s\n", j["method"].get<std::string>().c_str(),
              j["optimizer"].get<std::string>().c_str(), j["schedule"].get<std::string>().c_str());
  const json& b = j["backbone"];
  std::printf("  backbone   %s  sha256 %s  tensors hash %s (the backbone itself is not in the file)\n",
              b["name"].get<std::string>().c_str(),
              b["weights_sha256"].get<std::string>().empty() ? "- (random init)" : b["weights_sha256"].get<std::string>().c_str(),
              b["tensors_hash"].get<std::string>().empty() ? "-" : b["tensors_hash"].get<std::string>().c_str());
  line("trainable", "tensors");
  line("optimizer", "tensors");
  line("indices", "tensors");
  std::printf("  %-10s %lld encoded entries\n", "", static_cast<long long>(g["indices"]["entries"].get<int64_t>()));
  line("rng", "ranks");
  std::string summary;
  for (const auto& [key, value] : j["config_summary"].items()) summary += " " + key + "=" + value.get<std::string>();
  std::printf("  config    %s\n", summary.c_str());
  if (j.contains("verified")) std::printf("  verified: every dataset passed its checksum\n");
}

json weights_json(const std::string& path) {
  json per_dtype = json::object();
  int64_t params = 0, tensors = 0;
  std::string format;
  json metadata = json::object();
  auto add = [&](const std::string& dtype, int64_t numel, int64_t bytes) {
    ++tensors;
    params += numel;
    per_dtype[dtype] = per_dtype.value(dtype, int64_t{0}) + bytes;
  };
  if (path.size() >= 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0) {
    format = "safetensors";
    const auto file = model::SafetensorsFile::open(path);
    for (const auto& e : file.entries()) {
      int64_t numel = 1;
      for (auto s : e.shape) numel *= s;
      add(model::safetensors_dtype_name(e.dtype), numel, static_cast<int64_t>(e.end - e.begin));
    }
    for (const auto& [k, v] : file.metadata()) metadata[k] = v;
  } else {
    format = "llama2c";
    const auto m = model::read_llama2c(path);
    for (const auto& [name, t] : m.tensors) add("F32", t.numel(), t.numel() * 4);
    metadata["name"] = m.config.name;
  }
  return {{"kind", "weights"}, {"path", path}, {"format", format}, {"file_bytes", fs::file_size(path)},
          {"tensors", tensors}, {"params", params}, {"bytes_per_dtype", per_dtype}, {"metadata", metadata}};
}

void print_weights(const json& j) {
  std::printf("weights %s (%s): %s\n  %lld tensors, %lld parameters\n", j["path"].get<std::string>().c_str(),
              j["format"].get<std::string>().c_str(), human_bytes(j["file_bytes"].get<int64_t>()).c_str(),
              static_cast<long long>(j["tensors"].get<int64_t>()), static_cast<long long>(j["params"].get<int64_t>()));
  for (const auto& [dtype, bytes] : j["bytes_per_dtype"].items()) {
    std::printf("  %-5s %s\n", dtype.c_str(), human_bytes(bytes.get<int64_t>()).c_str());
  }
}

int run_inspect(const po::variables_map& vm) {
  if (!vm.count("checkpoint")) throw_usage_error("deltatune inspect: give a checkpoint (file or --out directory) or a weights file");
  const std::string path = resolve_path(vm["checkpoint"].as<std::string>());
  const bool as_json = vm["json"].as<bool>();
  const json j = is_hdf5(path) ? checkpoint_json(path, vm["verify"].as<bool>(), vm["datasets"].as<bool>()) : weights_json(path);
  if (as_json) {
    std::cout << j.dump(2) << "\n";
  } else if (j["kind"] == "checkpoint") {
    print_checkpoint(j);
  } else {
    print_weights(j);
  }
  return 0;
}

}  // namespace

Subcommand inspect_subcommand() {
  Subcommand sub;
  sub.name = "inspect";
  sub.summary = "summarize a checkpoint (step, method, counts, bytes, backbone) or a weights file";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    desc.add_options()
        ("checkpoint", po::value<std::string>(), "checkpoint file, checkpoint directory (--out), or weights file")
        ("json", po::bool_switch(), "print one JSON object instead of the summary")
        ("verify", po::bool_switch(), "also read every dataset through its checksum")
        ("datasets", po::bool_switch(), "with --json: list every dataset (dtype, shape, bytes, chunk offsets)");
  };
  sub.positional = {"checkpoint"};
  sub.run = run_inspect;
  return sub;
}

}  // namespace dt::launch
