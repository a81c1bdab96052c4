// peft/method.h — a PEFT method: what trains, and where it attaches.
//
// Design note (HF PEFT's tuners/<method>/, He et al.'s unified view): each method lives in its own
// folder with an options struct, its modules and one registration line. A method attaches to a
// backbone only through the backbone's named hook sites (model/hooks.h), creates its trainable tensors
// and reports them in a stable registration order — that order is what dist/ buckets and what
// checkpoints store. `plan()` predicts the same tensors from the config alone, without allocating the
// model, so `deltatune plan` and the start-up agreement can count them for T5-11B on a laptop.
// Methods compose: `--method lora+bitfit` attaches both; each sees the backbone already frozen.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/backbone.h"
#include "model/config.h"
#include "peft/options.h"

namespace dt::comm {
class Communicator;  // methods that compute from data (FISH's Fisher) do so collectively
}

namespace dt::peft {

struct Trainable {
  std::string name;   // e.g. "model.layers.0.self_attn.q_proj.lora_A.weight"
  at::Tensor tensor;  // a leaf with requires_grad
  std::string method;  // the method that created (or unfroze) it
};

// Training examples as a method may read them before or during training: rows by sample id
// (0..available-1, in an order the caller fixed; each rank gets the ids it asks for).
struct TrainingData {
  std::function<model::Batch(const std::vector<int64_t>& ids)> sample;
  int64_t available = 0;
};

// The sorted flat indices of one frozen weight that a sparse method's values live at (FISH's mask,
// DSEE's sparse support): what a checkpoint stores beside the values.
struct FixedIndices {
  std::string weight;
  std::vector<int64_t> shape;
  at::Tensor indices;  // int64, 1-D, strictly increasing
};

// What a sparse method adds to `plan`: the pool its indices are chosen from and their storage bytes.
struct IndexAccounting {
  int64_t eligible_params = 0;
  int64_t index_bytes = 0;
};

// --fish.dense-sync style baseline: the trainable's values travel inside the dense tensors they index
// (flat positions, one per value, in a buffer of `numel` floats), as DDP would move a masked tensor.
struct DenseSync {
  std::string trainable;
  at::Tensor positions;
  int64_t numel = 0;
};

// What a refresh of a method's indices did to `trainable`: per position of its new values, the old
// position (-1: new), so the optimizer state follows the values.
struct IndexRefresh {
  std::string trainable;
  std::vector<int64_t> carry;
};

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  // The tensors attach() will create or unfreeze, from the config alone (shapes and dtypes).
  virtual std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const = 0;
  // Creates the trainable tensors (leaves, requires_grad) and registers hooks on `backbone`.
  // The backbone's own parameters are already frozen.
  virtual std::vector<Trainable> attach(model::Backbone& backbone) = 0;
  // Canonical text of the method's options (start-up agreement, checkpoints).
  virtual std::string describe() const = 0;

  // The run's tasks (--task, in order), given before plan() and attach(). Task-conditioned methods
  // (shared_adapter's per-task parts, hyperformer, hyperprompt, attempt) size their per-task tensors by
  // it and read the batch's task from HookSet::task() in their hooks; the others ignore it.
  virtual void set_tasks(const std::vector<std::string>& names) {}

  // Methods that must run the backbone themselves override these (LST: the backbone without
  // autograd, then a side network); every other method changes the forward only through its hooks.
  // At most one method of a MethodSet may override the forward.
  virtual bool overrides_forward() const { return false; }
  virtual model::ForwardResult forward(model::Backbone& backbone, const model::Batch& batch,
                                       const model::ForwardOptions& options) {
    return backbone.forward(batch, options);
  }

  // Folding into the backbone (HF PEFT's merge_adapter / unmerge_adapter): merge() adds the method's
  // delta to the frozen weights in place and makes its hooks pass through, so the forward computes the
  // same function with the backbone's own weights; unmerge() subtracts it again (equal within fp
  // rounding) and re-enables the hooks. Methods that cannot be folded into the backbone's existing
  // weights (adapters, prefixes, prompts, BitFit's added biases, LST) keep can_merge() false.
  virtual bool can_merge() const { return false; }
  virtual void merge(model::Backbone& backbone);
  virtual void unmerge(model::Backbone& backbone);

  // --device: MethodSet::to moves the trainable tensors in place (hooks holding them follow); a
  // method that keeps other tensors (a FISH mask's indices on the device, LST's side network with
  // its frozen tables) moves them here.
  virtual void to(const c10::Device& device) {}

  // ---- what sparse methods can do (FISH, DSEE); the defaults are those of a dense method --------
  // Plan accounting of the indices (nullopt: not a sparse method).
  virtual std::optional<IndexAccounting> index_accounting(const model::ModelConfig& config) const {
    return std::nullopt;
  }
  // After attach(): the fixed indices the trainable values live at, per weight.
  virtual std::vector<FixedIndices> fixed_indices() const { return {}; }
  // Before attach(): the indices a checkpoint stored for this method (eval/export from a checkpoint, a
  // resume whose indices moved). A method whose indices come from data takes them instead of computing
  // them; one that recomputes its own deterministically (DSEE) ignores them (the checkpoint's
  // validation compares them).
  virtual void use_stored_indices(std::vector<FixedIndices> stored) {}
  // Whether attach() wants prepare() first, and prepare itself: collective, every rank calls it with its
  // communicator. FISH's Fisher mask needs the data; its magnitude and random masks do not, but prepare
  // splits their top-k across the ranks (attach alone would have each rank select over every weight).
  virtual bool needs_prepare() const { return false; }
  virtual void prepare(model::Backbone& backbone, const TrainingData& data, comm::Communicator& comm) {}
  // Indices that move during training (FISH --fish.refresh-every N): every N steps, refresh() moves
  // them (collective) and says where the values went.
  virtual int64_t refresh_every() const { return 0; }
  virtual IndexRefresh refresh(model::Backbone& backbone, const TrainingData& data, comm::Communicator& comm);
  // The DDP-style dense baseline of this method's gradient traffic, when asked for (--fish.dense-sync).
  virtual std::optional<DenseSync> dense_sync(const model::ModelConfig& config) const { return std::nullopt; }
};

struct MethodInfo {
  std::string name;
  std::string summary;
  // The method's own section (--lora.r, ...): launch/ declares them for `--help`, parsing and config files.
  std::vector<OptionSpec> options;
  // Reads the parsed values into the method's options struct (checking them: UsageError) and creates it.
  std::function<std::unique_ptr<Method>(const OptionValues&)> create;
};

// Registered methods by name; a second registration of a name throws. Built-ins are registered on
// first use (explicitly: static-initializer registration is dropped by the linker from static libs).
class Registry {
 public:
  static Registry& global();
  void add(MethodInfo info);
  const MethodInfo& get(const std::string& name) const;  // UsageError listing the known names
  std::vector<std::string> names() const;
  std::vector<OptionSpec> all_options() const;  // every method's, in registration order
  // The methods that can be merged into the backbone's weights, each asked (can_merge at its defaults).
  std::vector<std::string> mergeable() const;

 private:
  std::vector<MethodInfo> methods_;
};

// The classification head a task adds on top of the backbone (always trained, like HF PEFT's
// modules_to_save): Llama "score.weight", BERT "classifier.{weight,bias}", T5 none (label words).
std::vector<model::TensorMeta> head_plan(const model::ModelConfig& config, int64_t num_labels);

// The methods of one `--method a+b` string, applied in order.
class MethodSet {
 public:
  // The methods of `spec` ("lora+bitfit"), each created from its section of `values` and told the run's
  // tasks (Method::set_tasks; none given: one task, "default").
  static MethodSet from_names(const std::string& spec, const OptionValues& values,
                              const std::vector<std::string>& tasks = {});

  // Everything that will train (method tensors then the task head), from the config alone.
  std::vector<model::TensorMeta> plan(const model::ModelConfig& config, int64_t num_labels) const;
  // Freezes the backbone, attaches every method, and returns every trainable tensor (task head
  // included), in registration order. Names are unique (a clash throws).
  std::vector<Trainable> apply(model::Backbone& backbone) const;
  std::string describe() const;
  const std::vector<std::unique_ptr<Method>>& methods() const { return methods_; }

  // The forward pass of the set: the one method that overrides it, else the hooked backbone's.
  model::ForwardResult forward(model::Backbone& backbone, const model::Batch& batch,
                               const model::ForwardOptions& options = {}) const;
  // Merges every method (each must can_merge(); a UsageError names the first that cannot), and undoes it.
  bool can_merge() const;
  void merge(model::Backbone& backbone) const;
  void unmerge(model::Backbone& backbone) const;
  // After apply(): every trainable tensor and every method's own tensors to `device` (methods create
  // their tensors on the host, with the host's generator, so the initial values do not depend on it).
  void to(const c10::Device& device, const std::vector<Trainable>& trainables) const;
  // Before apply(): whether some method needs prepare(), and prepare every such method (collective).
  bool needs_prepare() const;
  void prepare(model::Backbone& backbone, const TrainingData& data, comm::Communicator& comm) const;
  // Whether some method's indices move during training (Method::refresh_every).
  bool refreshes_indices() const;

 private:
  std::vector<std::unique_ptr<Method>> methods_;
};

// Human accounting line: "trainable params: X || all params: Y || trainable%: Z".
std::string accounting_line(int64_t trainable, int64_t all);

// Registration functions of the built-in methods (one per folder).
void register_full(Registry&);
void register_bitfit(Registry&);
void register_lora(Registry&);
void register_houlsby(Registry&);
void register_pfeiffer(Registry&);
void register_parallel_adapter(Registry&);
void register_prefix(Registry&);
void register_prompt(Registry&);
void register_ia3(Registry&);
void register_compacter(Registry&);
void register_mam(Registry&);
void register_lst(Registry&);
void register_shared_adapter(Registry&);
void register_hyperformer(Registry&);
void register_hyperprompt(Registry&);
void register_attempt(Registry&);

}  // namespace dt::peft
