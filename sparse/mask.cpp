#include "sparse/mask.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <functional>
#include <set>
#include <sstream>

#include "model/safetensors.h"
#include "util/error.h"
#include "util/hash.h"

namespace dt::sparse {
namespace {

constexpr const char* kFormat = "deltatune-mask/1";

std::string join_shape(const std::vector<int64_t>& shape) {
  std::string out;
  for (auto s : shape) out += (out.empty() ? "" : ",") + std::to_string(s);
  return out;
}

std::vector<int64_t> parse_shape(const std::string& text, const std::string& path) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    try {
      out.push_back(std::stoll(part));
    } catch (const std::exception&) {
      throw UsageError(path + ": bad shape '" + text + "' in the mask metadata");
    }
  }
  return out;
}

// Non-negative floats order like their bit patterns read as int32 (+0.0 added to fold -0.0 into +0.0).
at::Tensor score_bits(const at::Tensor& score) {
  DT_CHECK(score.scalar_type() == at::kFloat, "top-k mask: scores must be float32");
  const at::Tensor s = (score.detach().contiguous().view(-1) + 0.0f).contiguous();
  DT_CHECK(at::isfinite(s).all().item<bool>() && (s >= 0).all().item<bool>(),
           "top-k mask: scores must be finite and non-negative");
  return s.view(at::kInt);
}

// 65536-bin histogram of 16-bit keys.
std::array<int64_t, 65536> key_histogram(const at::Tensor& keys) {
  std::array<int64_t, 65536> h{};
  if (keys.numel() == 0) return h;
  const at::Tensor counts = at::bincount(keys.to(at::kLong), {}, 65536).contiguous();
  const int64_t* c = counts.data_ptr<int64_t>();
  for (int64_t i = 0; i < 65536; ++i) h[i] = c[i];
  return h;
}

}  // namespace

int64_t MaskEntry::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

int64_t Mask::count() const {
  int64_t n = 0;
  for (const auto& e : entries) n += e.count();
  return n;
}

const MaskEntry* Mask::find(const std::string& name) const {
  for (const auto& e : entries) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

uint64_t Mask::hash() const {
  uint64_t h = kFnv1aOffset;
  for (const auto& e : entries) {
    h = fnv1a(h, e.name.data(), e.name.size() + 1);
    for (int64_t s : e.shape) h = fnv1a(h, &s, sizeof(s));
    const at::Tensor idx = e.indices.to(at::kLong).contiguous();
    const int64_t n = idx.numel();
    h = fnv1a(h, &n, sizeof(n));
    h = fnv1a(h, idx.data_ptr<int64_t>(), static_cast<size_t>(n) * sizeof(int64_t));
  }
  return h;
}

std::string Mask::hash_hex() const { return fmt::format("{:016x}", hash()); }

int64_t mask_count(const std::vector<model::TensorMeta>& tensors, const TopKOptions& options) {
  const int64_t eligible = model::total_params(tensors);
  if (options.count > 0) {
    if (options.per_tensor) throw_usage_error("--fish.count and --fish.per-tensor exclude each other");
    if (options.count > eligible) {
      throw_usage_error(fmt::format("--fish.count {} exceeds the {} eligible parameters", options.count, eligible));
    }
    return options.count;
  }
  if (!(options.keep > 0.0 && options.keep <= 1.0)) {
    throw_usage_error(fmt::format("--fish.keep must be in (0, 1], got {}", options.keep));
  }
  if (!options.per_tensor) return std::llround(options.keep * static_cast<double>(eligible));
  int64_t k = 0;
  for (const auto& t : tensors) k += std::llround(options.keep * static_cast<double>(t.numel()));
  return k;
}

namespace {

// The global top-k over scores produced one tensor at a time (see top_k_mask_streaming): a radix
// select in three passes over the tensors (high-16-bit histogram, low-16-bit histogram within the
// bucket, then the picks), each pass scoring one tensor, using it and dropping it.
std::vector<at::Tensor> top_k_streaming(size_t n, const std::function<at::Tensor(size_t)>& score, int64_t total,
                                        int64_t k) {
  DT_CHECK(k >= 0 && k <= total, fmt::format("top-k: k = {} of {} scores", k, total));
  std::vector<at::Tensor> out;
  if (k == 0) {
    for (size_t t = 0; t < n; ++t) {
      score_bits(score(t));  // the same checks as with k > 0
      out.push_back(at::empty({0}, at::kLong));
    }
    return out;
  }
  // Radix select of the k-th largest bit pattern: high 16 bits, then low 16 bits within that bucket.
  std::array<int64_t, 65536> hi{};
  for (size_t t = 0; t < n; ++t) {
    const auto h = key_histogram(at::bitwise_right_shift(score_bits(score(t)), 16));
    for (int i = 0; i < 65536; ++i) hi[i] += h[i];
  }
  int64_t above = 0;
  int bucket = 65535;
  for (; bucket >= 0; --bucket) {
    if (above + hi[bucket] >= k) break;
    above += hi[bucket];
  }
  std::array<int64_t, 65536> lo{};
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor b = score_bits(score(t));
    const at::Tensor in_bucket = b.masked_select(at::bitwise_right_shift(b, 16) == bucket);
    const auto h = key_histogram(at::bitwise_and(in_bucket, 0xFFFF));
    for (int i = 0; i < 65536; ++i) lo[i] += h[i];
  }
  int low = 65535;
  for (; low >= 0; --low) {
    if (above + lo[low] >= k) break;
    above += lo[low];
  }
  const int32_t threshold = static_cast<int32_t>((static_cast<uint32_t>(bucket) << 16) | static_cast<uint32_t>(low));
  int64_t ties_left = k - above;  // entries equal to the threshold still to take, lowest positions first
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor b = score_bits(score(t));
    const at::Tensor greater = at::nonzero(b > threshold).view(-1);
    at::Tensor equal = at::nonzero(b == threshold).view(-1);
    const int64_t take = std::min<int64_t>(ties_left, equal.numel());
    ties_left -= take;
    at::Tensor idx = at::cat({greater, equal.narrow(0, 0, take)});
    out.push_back(std::get<0>(idx.sort()).contiguous());
  }
  DT_CHECK(ties_left == 0, "top-k: internal error, ties left over");
  return out;
}

}  // namespace

std::vector<at::Tensor> top_k_indices(const std::vector<at::Tensor>& scores, int64_t k) {
  int64_t total = 0;
  for (const auto& s : scores) {
    score_bits(s);  // checked before k, as always
    total += s.numel();
  }
  return top_k_streaming(scores.size(), [&scores](size_t t) { return scores[t]; }, total, k);
}

Mask top_k_mask_streaming(const std::vector<model::TensorMeta>& tensors, const ScoreFn& score,
                          const TopKOptions& options) {
  const int64_t k = mask_count(tensors, options);
  std::vector<at::Tensor> picked;
  auto checked = [&tensors, &score](size_t t) {
    at::Tensor s = score(t);
    DT_CHECK(s.sizes().vec() == tensors[t].shape,
             "top-k mask: the score of '" + tensors[t].name + "' has shape " + c10::str(s.sizes()));
    return s;
  };
  if (options.per_tensor) {
    for (size_t t = 0; t < tensors.size(); ++t) {
      const at::Tensor s = checked(t);
      picked.push_back(top_k_indices({s}, std::llround(options.keep * static_cast<double>(s.numel()))).front());
    }
  } else {
    picked = top_k_streaming(tensors.size(), checked, model::total_params(tensors), k);
  }
  Mask mask;
  for (size_t t = 0; t < tensors.size(); ++t) {
    if (picked[t].numel() == 0) continue;
    mask.entries.push_back({tensors[t].name, tensors[t].shape, picked[t]});
  }
  DT_CHECK(mask.count() == k, "top-k mask: kept " + std::to_string(mask.count()) + " of " + std::to_string(k));
  return mask;
}

Mask top_k_mask(const std::vector<std::pair<std::string, at::Tensor>>& scores, const TopKOptions& options) {
  std::vector<model::TensorMeta> metas;
  for (const auto& [name, s] : scores) metas.push_back({name, s.sizes().vec()});
  const int64_t k = mask_count(metas, options);
  std::vector<at::Tensor> picked;
  if (options.per_tensor) {
    for (const auto& [name, s] : scores) {
      picked.push_back(top_k_indices({s}, std::llround(options.keep * static_cast<double>(s.numel()))).front());
    }
  } else {
    std::vector<at::Tensor> all;
    for (const auto& [name, s] : scores) all.push_back(s);
    picked = top_k_indices(all, k);
  }
  Mask mask;
  for (size_t t = 0; t < scores.size(); ++t) {
    if (picked[t].numel() == 0) continue;
    mask.entries.push_back({scores[t].first, scores[t].second.sizes().vec(), picked[t]});
  }
  DT_CHECK(mask.count() == k, "top-k mask: kept " + std::to_string(mask.count()) + " of " + std::to_string(k));
  return mask;
}

void save_mask(const Mask& mask, const std::string& path) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> meta = mask.metadata;
  std::string order;
  for (const auto& e : mask.entries) {
    tensors.emplace_back(e.name, e.indices.to(at::kLong).contiguous());
    meta["shape." + e.name] = join_shape(e.shape);
    order += (order.empty() ? "" : ";") + e.name;
  }
  meta["format"] = kFormat;
  meta["order"] = order;
  meta["count"] = std::to_string(mask.count());
  meta["hash"] = mask.hash_hex();
  model::save_safetensors(path, tensors, meta);
}

namespace {
const std::string& meta_value(const model::SafetensorsFile& file, const std::string& key) {
  auto it = file.metadata().find(key);
  if (it == file.metadata().end()) {
    throw UsageError(file.path() + ": not a deltatune mask (no '" + key + "' in its metadata)");
  }
  return it->second;
}
}  // namespace

Mask load_mask(const std::string& path) {
  const auto file = model::SafetensorsFile::open(path);
  if (meta_value(file, "format") != kFormat) {
    throw UsageError(path + ": mask format '" + meta_value(file, "format") + "', expected " + kFormat);
  }
  Mask mask;
  for (const auto& [key, value] : file.metadata()) {
    if (key.rfind("shape.", 0) != 0 && key != "order" && key != "format") mask.metadata[key] = value;
  }
  std::vector<std::string> names;
  {
    std::stringstream in(meta_value(file, "order"));
    std::string name;
    while (std::getline(in, name, ';')) names.push_back(name);
  }
  if (names.size() != file.entries().size()) {
    throw UsageError(fmt::format("{}: {} tensors, but its order lists {}", path, file.entries().size(), names.size()));
  }
  for (const auto& name : names) {
    const auto& entry = file.entry(name);
    if (entry.dtype != at::kLong || entry.shape.size() != 1) {
      throw UsageError(path + ": mask tensor '" + name + "' is not 1-D int64");
    }
    MaskEntry e{name, parse_shape(meta_value(file, "shape." + name), path), file.tensor(name).clone()};
    const int64_t n = e.numel();
    const at::Tensor& idx = e.indices;
    const bool ok = idx.numel() == 0 || (idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < n &&
                                         (idx.numel() < 2 || (idx.slice(0, 1) > idx.slice(0, 0, -1)).all().item<bool>()));
    if (!ok) throw UsageError(path + ": indices of '" + name + "' are not strictly increasing within its shape");
    mask.entries.push_back(std::move(e));
  }
  if (mask.hash_hex() != meta_value(file, "hash")) {
    throw UsageError(path + ": content hash " + mask.hash_hex() + " differs from the recorded " +
                     meta_value(file, "hash") + " (corrupted file?)");
  }
  mask.metadata["hash"] = mask.hash_hex();
  mask.metadata["count"] = std::to_string(mask.count());
  return mask;
}

int64_t mask_file_count(const std::string& path) {
  const auto file = model::SafetensorsFile::open(path);
  if (!file.metadata().count("format") || file.metadata().at("format") != kFormat) {
    throw UsageError(path + ": not a deltatune mask");
  }
  int64_t n = 0;
  for (const auto& e : file.entries()) n += e.shape.empty() ? 1 : e.shape[0];
  return n;
}

void check_mask_fits(const Mask& mask, const std::vector<model::TensorMeta>& tensors, const std::string& source) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& t : tensors) shapes[t.name] = t.shape;
  for (const auto& e : mask.entries) {
    auto it = shapes.find(e.name);
    if (it == shapes.end()) throw UsageError(source + ": mask tensor '" + e.name + "' is not a backbone tensor of this model");
    if (it->second != e.shape) {
      throw UsageError(source + ": mask tensor '" + e.name + "' has shape [" + join_shape(e.shape) + "], the model's is [" +
                       join_shape(it->second) + "]");
    }
  }
}

}  // namespace dt::sparse
