// sparse/fish.cpp — FISH (Sung et al., "Training Neural Networks with Fixed Sparse Masks"): the
// method, its options, the mask it trains over, and plan accounting. See sparse/methods.h.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>

#include "model/device.h"
#include "model/parameter_map.h"
#include "sparse/index_codec.h"
#include "sparse/magnitude.h"
#include "sparse/methods.h"
#include "sparse/scatter.h"
#include "util/error.h"
#include "util/log.h"

namespace dt::sparse {


FishOptions fish_options(const peft::OptionValues& values) {
  FishOptions o;
  o.topk.keep = values.get<double>("fish.keep");
  o.topk.count = values.get<int64_t>("fish.count");
  o.topk.per_tensor = values.get<bool>("fish.per-tensor");
  o.samples = values.get<int64_t>("fish.samples");
  o.fisher.kind = parse_fisher_kind(values.get<std::string>("fish.fisher"));
  o.fisher.batch_size = values.get<int64_t>("fish.batch-size");
  o.fisher.include = split_globs(values.get<std::string>("fish.include"));
  o.fisher.exclude = split_globs(values.get<std::string>("fish.exclude"));
  o.fisher.shard = parse_fisher_shard(values.get<std::string>("fish.fisher-shard"));
  o.fisher.per_tensor_top_k = o.topk.per_tensor;
  o.select = values.get<std::string>("fish.select");
  if (values.has("fish.mask")) o.mask_path = values.get<std::string>("fish.mask");
  o.seed = values.get<uint64_t>("fish.seed");
  o.refresh_every = values.get<int64_t>("fish.refresh-every");
  o.dense_sync = values.get<bool>("fish.dense-sync");
  if (o.dense_sync && o.refresh_every > 0) {
    throw_usage_error("--fish.dense-sync keeps the dense positions of a fixed mask: it excludes --fish.refresh-every");
  }
  if (o.refresh_every < 0) throw_usage_error("--fish.refresh-every must be >= 0");
  if (o.refresh_every > 0 && o.select != "fisher") {
    throw_usage_error("--fish.refresh-every recomputes the Fisher: it needs --fish.select fisher");
  }
  if (o.refresh_every > 0 && o.topk.per_tensor) {
    throw_usage_error("--fish.refresh-every keeps one global count: it excludes --fish.per-tensor");
  }
  if (o.select != "fisher" && o.select != "magnitude" && o.select != "random") {
    throw_usage_error("--fish.select '" + o.select + "': expected fisher | magnitude | random");
  }
  if (o.samples <= 0) throw_usage_error("--fish.samples must be positive");
  if (o.fisher.batch_size <= 0) throw_usage_error("--fish.batch-size must be positive");
  if (o.fisher.include.empty()) throw_usage_error("--fish.include is empty");
  if (o.topk.count < 0) throw_usage_error("--fish.count must be >= 0");
  if (o.topk.count > 0 && o.topk.per_tensor) throw_usage_error("--fish.count and --fish.per-tensor exclude each other");
  if (o.topk.count == 0 && !(o.topk.keep > 0.0 && o.topk.keep <= 1.0)) {
    throw_usage_error(fmt::format("--fish.keep must be in (0, 1], got {}", o.topk.keep));
  }
  return o;
}

std::string describe_fish_options(const FishOptions& o) {
  std::string include, exclude;
  for (const auto& g : o.fisher.include) include += (include.empty() ? "" : ",") + g;
  for (const auto& g : o.fisher.exclude) exclude += (exclude.empty() ? "" : ",") + g;
  std::string out = o.topk.count > 0 ? fmt::format("count={}", o.topk.count) : fmt::format("keep={}", o.topk.keep);
  if (o.topk.per_tensor) out += ",per_tensor";
  if (!o.mask_path.empty()) {
    out += ",mask=" + o.mask_path;
  } else {
    out += ",select=" + o.select;
    if (o.select == "fisher") {
      out += fmt::format(",fisher={},samples={}", o.fisher.kind == FisherKind::Batch ? "batch" : "sample", o.samples);
      if (o.fisher.kind == FisherKind::Batch) out += fmt::format(",batch={}", o.fisher.batch_size);
    }
    if (o.select != "magnitude") out += fmt::format(",seed={}", o.seed);
  }
  if (o.refresh_every > 0) out += fmt::format(",refresh_every={}", o.refresh_every);
  return out + ",include=" + include + ",exclude=" + exclude;
}

// ---- the mask -------------------------------------------------------------------------------------

Mask compute_fish_mask(model::Backbone& backbone, const SampleFn& sample, int64_t available,
                       comm::Communicator* comm, const FishOptions& options) {
  NamedTensors scores;
  int64_t used = 0;
  const auto t0 = std::chrono::steady_clock::now();
  if (options.select == "magnitude") {
    // |W| read from the weights' own bits (bf16 in place), split across the ranks when a communicator
    // is given (sparse/magnitude.h); the same mask as top_k_mask over float32 |W|.
    const std::map<std::string, at::Tensor> by_name = model::parameters_by_name(backbone);
    for (const auto& meta : eligible_tensors(backbone.config(), options.fisher.include, options.fisher.exclude)) {
      scores.emplace_back(meta.name, by_name.at(meta.name).detach());
    }
  } else if (options.select == "fisher") {
    DT_CHECK(sample && available > 0 && comm, "FISH: the Fisher mask needs training samples and a communicator");
    used = std::min(options.samples, available);
    scores = compute_fisher(backbone, sample, used, *comm, options.fisher);
  } else {
    const std::map<std::string, at::Tensor> by_name = model::parameters_by_name(backbone);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
    for (const auto& meta : eligible_tensors(backbone.config(), options.fisher.include, options.fisher.exclude)) {
      const at::Tensor& w = by_name.at(meta.name);
      scores.emplace_back(meta.name, at::rand(w.sizes(), gen, at::TensorOptions().dtype(at::kFloat)));
    }
  }
  DT_CHECK(!scores.empty(), "FISH: no eligible tensor (check --fish.include / --fish.exclude)");
  // The Fisher (all-reduced) and the random scores are equal on every rank, so the top-k splits too.
  const auto t1 = std::chrono::steady_clock::now();
  Mask mask = top_k_magnitude(scores, options.topk, comm,
                              options.select == "magnitude" ? TopKKey::Magnitude : TopKKey::Score);
  const auto seconds = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  log::info("fish: {} selection of {} entries over {} tensors: scores {:.2f} s, top-k {:.2f} s on {} rank(s)",
            options.select, mask.count(), mask.entries.size(), seconds(t0, t1),
            seconds(t1, std::chrono::steady_clock::now()), comm ? comm->size() : 1);
  mask.metadata["method"] = "fish";
  mask.metadata["options"] = describe_fish_options(options);
  mask.metadata["model"] = backbone.config().name;
  mask.metadata["eligible_params"] = std::to_string(model::total_params(
      eligible_tensors(backbone.config(), options.fisher.include, options.fisher.exclude)));
  if (options.select == "fisher") {
    mask.metadata["samples"] = std::to_string(used);
    mask.metadata["world_size"] = std::to_string(comm->size());
    mask.metadata["fisher_sharded"] = fisher_is_sharded(backbone.config(), *comm, options.fisher) ? "1" : "0";
  }
  return mask;
}

std::vector<EncodedIndices> encoded_indices(const peft::MethodSet& methods) {
  std::vector<EncodedIndices> out;
  for (const auto& m : methods.methods()) {
    for (const auto& e : m->fixed_indices()) {
      const at::Tensor idx = e.indices.to(at::kCPU, at::kLong).contiguous();
      std::vector<int64_t> flat(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
      const int64_t numel = model::TensorMeta{e.weight, e.shape}.numel();
      out.push_back({m->name() + ":" + e.weight, encode_indices(flat, numel), idx.numel(), numel});
    }
  }
  return out;
}

void restore_indices(const peft::MethodSet& methods, const std::vector<EncodedIndices>& indices,
                     const model::ModelConfig& config) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& meta : model::describe(config)) shapes[meta.name] = meta.shape;
  for (const auto& m : methods.methods()) {
    if (!m->index_accounting(config)) continue;  // a dense method stores no indices
    const std::string prefix = m->name() + ":";
    std::vector<peft::FixedIndices> stored;
    for (const auto& e : indices) {
      if (e.name.rfind(prefix, 0) != 0) continue;
      const std::string weight = e.name.substr(prefix.size());
      int64_t numel = 0;
      std::vector<int64_t> flat = decode_indices(e.bytes.data(), e.bytes.size(), &numel);
      if (static_cast<int64_t>(flat.size()) != e.count) {
        throw_usage_error(fmt::format("{}: the stored indices of '{}' hold {} entries, their header says {}",
                                      m->name(), weight, flat.size(), e.count));
      }
      auto shape = shapes.find(weight);
      if (shape == shapes.end()) {
        // Not a backbone weight: a tensor the method itself creates (sparse_adapter's pruned adapters),
        // stored flat; the method checks it against its own tensors (use_stored_indices / attach).
        stored.push_back({weight, {numel}, at::tensor(flat, at::kLong)});
        continue;
      }
      const int64_t expected_numel = model::TensorMeta{weight, shape->second}.numel();
      if (numel != expected_numel) {
        throw_usage_error(fmt::format("{}: the stored indices of '{}' are {} of {} entries; {} has {} entries there",
                                      m->name(), weight, flat.size(), numel, config.name, expected_numel));
      }
      stored.push_back({weight, shape->second, at::tensor(flat, at::kLong)});
    }
    m->use_stored_indices(std::move(stored));
  }
}

// ---- the method -----------------------------------------------------------------------------------

std::vector<model::TensorMeta> FishMethod::plan(const model::ModelConfig& config) const {
  int64_t k = 0;
  if (mask_) {
    k = mask_->count();
  } else if (!options_.mask_path.empty()) {
    k = mask_file_count(options_.mask_path);
  } else {
    k = mask_count(eligible_tensors(config, options_.fisher.include, options_.fisher.exclude), options_.topk);
  }
  return {{"fish.values", {k}}};
}

std::vector<peft::Trainable> FishMethod::attach(model::Backbone& backbone) {
  if (!mask_) {
    if (!options_.mask_path.empty()) {
      Mask loaded = load_mask(options_.mask_path);
      std::vector<model::TensorMeta> tensors;
      for (auto& meta : model::describe(backbone.config())) {
        if (!model::is_task_head(meta.name)) tensors.push_back(std::move(meta));
      }
      check_mask_fits(loaded, tensors, options_.mask_path);
      set_mask(std::move(loaded));
    } else if (options_.select != "fisher") {
      // Magnitude / random selection is local and deterministic: the same mask on every rank.
      set_mask(compute_fish_mask(backbone, {}, 0, nullptr, options_));
    } else {
      throw_usage_error(
          "--method fish: the Fisher mask needs training data, which attaching the method does not get; compute it "
          "first (`deltatune mask ... --fish.mask-out M` then --fish.mask M, or MethodSet::prepare before apply), or "
          "use --fish.select magnitude|random");
    }
  }
  const std::map<std::string, at::Tensor> by_name = model::parameters_by_name(backbone);
  for (const auto& e : mask_->entries) {
    auto it = by_name.find(e.name);
    DT_CHECK(it != by_name.end(), "fish: the backbone has no parameter '" + e.name + "'");
    DT_CHECK(it->second.sizes().vec() == e.shape, "fish: mask shape of '" + e.name + "' differs from the parameter");
  }
  values_ = at::zeros({mask_->count()}, at::kFloat).requires_grad_(true);
  *merged_ = false;
  set_layout();
  // Hooks on the masked tensors; with --fish.refresh-every on every eligible tensor, since a later
  // mask may move into any of them (a tensor outside the layout passes through).
  std::vector<std::string> hooked;
  if (options_.refresh_every > 0) {
    for (const auto& meta : eligible_tensors(backbone.config(), options_.fisher.include, options_.fisher.exclude)) {
      hooked.push_back(meta.name);
    }
  } else {
    for (const auto& e : mask_->entries) hooked.push_back(e.name);
  }
  const at::Tensor values = values_;
  std::shared_ptr<const Layout> layout = layout_;
  std::shared_ptr<const bool> merged = merged_;
  for (const auto& name : hooked) {
    backbone.hooks().set_weight(name, [values, layout, merged, name](const at::Tensor& w) {
      auto it = layout->find(name);
      if (*merged || it == layout->end()) return w;
      return add_scattered(w, it->second.indices, values.narrow(0, it->second.begin, it->second.count));
    });
  }
  return {{"fish.values", values_, "fish"}};
}

std::vector<peft::FixedIndices> FishMethod::fixed_indices() const {
  std::vector<peft::FixedIndices> out;
  if (mask_) {
    for (const auto& e : mask_->entries) out.push_back({e.name, e.shape, e.indices});
  }
  return out;
}

void FishMethod::use_stored_indices(std::vector<peft::FixedIndices> stored) {
  if (stored.empty()) throw_usage_error("fish: the checkpoint stores no FISH mask (indices 'fish:*')");
  Mask mask;
  for (auto& e : stored) mask.entries.push_back({std::move(e.weight), std::move(e.shape), std::move(e.indices)});
  set_mask(std::move(mask));
}

void FishMethod::prepare(model::Backbone& backbone, const peft::TrainingData& data, comm::Communicator& comm) {
  Mask mask = compute_fish_mask(backbone, data.sample, data.available, &comm, options_);
  const std::string source = options_.select == "fisher" ? "the Fisher of " + mask.metadata["samples"] + " samples"
                             : options_.select == "magnitude" ? std::string("the largest |W|")
                                                              : "random scores (seed " + std::to_string(options_.seed) + ")";
  log::info("fish: mask of {} entries over {} tensors from {} (hash {})", mask.count(), mask.entries.size(), source,
            mask.hash_hex());
  set_mask(std::move(mask));
}

std::optional<peft::DenseSync> FishMethod::dense_sync(const model::ModelConfig& config) const {
  if (!options_.dense_sync) return std::nullopt;
  DT_CHECK(values_.defined() && mask_, "fish: dense_sync() needs an attached method");
  // Every tensor the mask may choose from, end to end (FISH's DDP model has them all requiring grad);
  // the values sit in mask order, as set_layout() lays them out.
  std::map<std::string, int64_t> offset_of;
  int64_t total = 0;
  for (const auto& meta : eligible_tensors(config, options_.fisher.include, options_.fisher.exclude)) {
    offset_of[meta.name] = total;
    total += meta.numel();
  }
  std::vector<at::Tensor> parts;
  for (const auto& e : mask_->entries) {
    const auto it = offset_of.find(e.name);
    DT_CHECK(it != offset_of.end(), "fish: masked tensor " + e.name + " is not among the eligible tensors");
    parts.push_back(e.indices.to(at::kLong) + it->second);
  }
  at::Tensor positions = parts.empty() ? at::empty({0}, at::kLong) : at::cat(parts);
  return peft::DenseSync{"fish.values", positions.to(values_.device()).contiguous(), total};
}

void FishMethod::set_layout() {
  layout_->clear();
  int64_t offset = 0;
  for (const auto& e : mask_->entries) {
    // The hooks scatter on the values' device: the indices live there too.
    (*layout_)[e.name] = Slice{e.indices.to(values_.device(), at::kLong).contiguous(), offset, e.count()};
    offset += e.count();
  }
}

peft::IndexRefresh FishMethod::refresh(model::Backbone& backbone, const peft::TrainingData& data,
                                       comm::Communicator& comm) {
  DT_CHECK(values_.defined() && mask_ && !*merged_, "fish: refresh needs an attached, unmerged method");
  DT_CHECK(options_.refresh_every > 0, "fish: refresh without --fish.refresh-every (the hooks cover the mask only)");
  Mask next = compute_fish_mask(backbone, data.sample, data.available, &comm, options_);
  DT_CHECK(next.count() == mask_->count(), "fish: a refreshed mask has another count");
  // Both masks list sorted flat indices per tensor: merge them tensor by tensor.
  std::vector<int64_t> carry(static_cast<size_t>(next.count()), -1);
  int64_t position = 0;
  for (const auto& e : next.entries) {
    const at::Tensor idx = e.indices.to(at::kLong).contiguous();
    const int64_t* now = idx.data_ptr<int64_t>();
    auto old = layout_->find(e.name);
    if (old != layout_->end()) {
      const at::Tensor before_idx = old->second.indices.to(at::kCPU);
      const int64_t* before = before_idx.data_ptr<int64_t>();
      int64_t i = 0, j = 0;
      while (i < e.count() && j < old->second.count) {
        if (now[i] == before[j]) carry[position + i++] = old->second.begin + j++;
        else if (now[i] < before[j]) ++i;
        else ++j;
      }
    }
    position += e.count();
  }
  {
    c10::NoGradGuard no_grad;
    const at::Tensor old_values = values_.detach().clone();
    std::vector<int64_t> to, from;
    for (size_t p = 0; p < carry.size(); ++p) {
      if (carry[p] >= 0) {
        to.push_back(static_cast<int64_t>(p));
        from.push_back(carry[p]);
      }
    }
    at::Tensor v = values_.detach();
    v.zero_();
    if (!to.empty()) {
      v.index_put_({at::tensor(to, at::kLong).to(v.device())},
                   old_values.index_select(0, at::tensor(from, at::kLong).to(v.device())));
    }
  }
  int64_t kept = 0;
  for (int64_t c : carry) kept += c >= 0;
  log::info("fish: mask refreshed ({} of {} indices kept, hash {})", kept, next.count(), next.hash_hex());
  mask_ = std::make_shared<Mask>(std::move(next));
  set_layout();
  return {"fish.values", std::move(carry)};
}

void FishMethod::add_delta(model::Backbone& backbone, double sign) const {
  DT_CHECK(values_.defined() && mask_, "fish: merge before attach");
  c10::NoGradGuard no_grad;
  const std::map<std::string, at::Tensor> by_name = model::parameters_by_name(backbone);
  for (const auto& [name, slice] : *layout_) {
    at::Tensor w = by_name.at(name);
    const at::Tensor v = values_.detach().narrow(0, slice.begin, slice.count).to(w.scalar_type()) * sign;
    w.view({-1}).index_add_(0, slice.indices, v);
  }
}

void FishMethod::to(const c10::Device& device) {
  // The hooks read the layout through a shared pointer, so new tensors in it are seen; the mask's own
  // indices stay on the host (checkpoints encode them).
  for (auto& [name, slice] : *layout_) slice.indices = slice.indices.to(device);
}

void FishMethod::merge(model::Backbone& backbone) {
  DT_CHECK(!*merged_, "fish: already merged");
  add_delta(backbone, 1.0);
  *merged_ = true;
}

void FishMethod::unmerge(model::Backbone& backbone) {
  DT_CHECK(*merged_, "fish: not merged");
  add_delta(backbone, -1.0);
  *merged_ = false;
}

std::string FishMethod::describe() const {
  // The mask hash is always part of it, so the start-up agreement refuses ranks holding different masks.
  // With --fish.refresh-every the mask moves: train re-describes after each refresh, so a checkpoint
  // carries the hash of the mask it stores.
  return "fish(" + describe_fish_options(options_) + (mask_ ? ",mask_hash=" + mask_->hash_hex() : "") + ")";
}

// ---- accounting -------------------------------------------------------------------------------------

std::optional<peft::IndexAccounting> FishMethod::index_accounting(const model::ModelConfig& config) const {
  peft::IndexAccounting a;
  const auto tensors = eligible_tensors(config, options_.fisher.include, options_.fisher.exclude);
  a.eligible_params = model::total_params(tensors);
  if (mask_ || !options_.mask_path.empty()) {
    const Mask loaded = mask_ ? Mask{} : load_mask(options_.mask_path);
    const Mask& m = mask_ ? *mask_ : loaded;
    for (const auto& e : m.entries) {
      const at::Tensor idx = e.indices.to(at::kLong).contiguous();
      const std::vector<int64_t> v(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
      a.index_bytes += encoded_index_bytes(v, e.numel());
    }
    return a;
  }
  const int64_t k = mask_count(tensors, options_.topk);
  const double density = a.eligible_params > 0 ? static_cast<double>(k) / static_cast<double>(a.eligible_params) : 0;
  for (const auto& t : tensors) {
    const double keep = options_.topk.per_tensor ? options_.topk.keep : density;
    const int64_t k_t = std::llround(keep * static_cast<double>(t.numel()));
    if (k_t > 0) a.index_bytes += index_bytes_bound(k_t, t.numel());
  }
  return a;
}

SparseAccounting sparse_accounting(const peft::MethodSet& methods, const model::ModelConfig& config) {
  SparseAccounting total;
  for (const auto& m : methods.methods()) {
    const auto a = m->index_accounting(config);
    if (!a) continue;
    total.sparse = true;
    total.eligible_params += a->eligible_params;
    total.index_bytes += a->index_bytes;
  }
  return total;
}

void register_fish(peft::Registry& registry) {
  registry.add({"fish", "FISH: a fixed sparse mask by Fisher information; trains the k masked values only",
                {
                 {"fish.keep", double{0.005},
                  "fraction of the eligible parameters to train"},
                 {"fish.count", int64_t{0},
                  "train exactly this many (overrides --fish.keep)"},
                 {"fish.per-tensor", false,
                  "keep round(keep x size) in every tensor instead of a global top-k"},
                 {"fish.samples", int64_t{1024},
                  "training examples the Fisher is summed over"},
                 {"fish.fisher", std::string("sample"),
                  "sample: per-example squared gradients (FISH) | batch: squared batch-mean gradient x batch size"},
                 {"fish.batch-size", int64_t{16},
                  "examples per backward with --fish.fisher batch"},
                 {"fish.fisher-shard", std::string("auto"),
                  "auto | on | off: each rank keeps the Fisher of only the tensors its share of the top-k reads "
                  "(squares summed over ranks after each round of batches); auto: on over MPI with >1 rank when "
                  "the float32 Fisher exceeds 1 GiB"},
                 {"fish.include", std::string("*"),
                  "comma-separated globs of the backbone tensors the mask is chosen from (HF names)"},
                 {"fish.exclude", std::string(""),
                  "comma-separated globs to leave out"},
                 {"fish.select", std::string("fisher"),
                  "fisher | magnitude (largest |W|) | random: how the mask is chosen"},
                 {"fish.mask", std::string(),
                  "a mask file from `deltatune mask` (instead of computing one)", /*has_default=*/false},
                 {"fish.seed", uint64_t{0},
                  "order of the Fisher samples; random selection"},
                 {"fish.refresh-every", int64_t{0},
                  "recompute the Fisher mask every N steps, carrying values over for kept indices (0: fixed mask)"},
                 {"fish.dense-sync", false,
                  "baseline: all-reduce the masked tensors whole, zeros included, as FISH's own DDP code does "
                  "(same result, ~1/keep times the bytes)"},
                },
                [](const peft::OptionValues& values) { return std::make_unique<FishMethod>(fish_options(values)); }});
}

void register_methods() {
  static const bool done = [] {
    auto& registry = peft::Registry::global();
    const auto names = registry.names();
    if (std::find(names.begin(), names.end(), "fish") == names.end()) register_fish(registry);
    if (std::find(names.begin(), names.end(), "dsee") == names.end()) register_dsee(registry);
    if (std::find(names.begin(), names.end(), "sparse_adapter") == names.end()) register_sparse_adapter(registry);
    return true;
  }();
  (void)done;
}

}  // namespace dt::sparse
