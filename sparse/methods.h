// sparse/methods.h — the sparse PEFT methods (FISH, DSEE) and what launch/ calls around them.
//
// Design note: FISH and DSEE are ordinary peft::Methods whose trainable tensors are dense VALUES over
// fixed flat indices of frozen weights, applied by weight hooks W' = W + scatter(values) (plus B·A
// for DSEE). So the optimizer state and the gradient dist::GradSync all-reduces are exactly the k
// values: dist/ never sees a mask, and the wire carries 4k bytes per step instead of the dense size.
//
// FISH ("fish"): one trainable "fish.values" [k], k = round(keep × eligible) (or --fish.count, or
// Σ round(keep × n_t) with --fish.per-tensor, or the loaded mask's count): plan() knows k from the
// config alone although the split over tensors needs the Fisher; attach() creates that one flat
// tensor and hooks per masked tensor a narrow() view of it (contiguous on the wire, one bucket).
// The mask comes from --fish.mask PATH (`deltatune mask` writes it), from Method::prepare() before
// attach (the Fisher needs data, which attach() does not get), or, for --fish.select magnitude |
// random, from the weights alone at attach. describe() carries the mask's hash once it is known, so
// the start-up agreement of `train` (item "method") catches ranks holding different masks.
//
// DSEE ("dsee"): per target weight W [out, in] (--dsee.targets, default q,v as the DSEE code):
// W' = W + (B·A + S)·(alpha / r) with A [r, in] ~ N(0, 0.02), B [out, r] = 0 and S holding
// --dsee.sparse values (zero at start) at fixed indices chosen from the pretrained W: the support of
// the sparse part of a GreBsmo-style robust decomposition W ≈ U·V + S (--dsee.select grebsmo), or
// the largest |W| (magnitude). Trainables per target: "<module>.dsee_A.weight", ".dsee_B.weight",
// ".dsee_S.values". S is never dense (the DSEE code keeps a dense S and masks its gradient).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <utility>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "model/backbone.h"
#include "model/config.h"
#include "peft/method.h"
#include "sparse/fisher.h"
#include "sparse/mask.h"

namespace dt::sparse {

// Registers "fish", "dsee" and "sparse_adapter" into peft::Registry::global() (once; later calls do nothing).
void register_methods();
void register_fish(peft::Registry& registry);
void register_dsee(peft::Registry& registry);
// "sparse_adapter" (sparse/sparse_adapter.cpp): adapters pruned at initialisation, values over fixed indices.
void register_sparse_adapter(peft::Registry& registry);

// ---- plan accounting -------------------------------------------------------------------------------
struct SparseAccounting {
  bool sparse = false;          // some method of the set is sparse
  int64_t eligible_params = 0;  // what masks / index sets are chosen from
  int64_t index_bytes = 0;      // index storage a checkpoint adds (sparse/index_codec.h)
};

// ---- FISH ----------------------------------------------------------------------------------------
struct FishOptions {
  TopKOptions topk;          // --fish.keep, --fish.count, --fish.per-tensor
  FisherOptions fisher;      // --fish.fisher, --fish.batch-size, --fish.include, --fish.exclude
  int64_t samples = 1024;    // --fish.samples (capped by the data available)
  std::string select = "fisher";  // --fish.select fisher | magnitude | random
  std::string mask_path;     // --fish.mask
  uint64_t seed = 0;         // --fish.seed: sample order (mask) and the random selection
  int64_t refresh_every = 0; // --fish.refresh-every N: recompute the Fisher mask every N steps (0: fixed)
  bool dense_sync = false;   // --fish.dense-sync: the DDP-style baseline (GradSync's dense scatter hook)
};
FishOptions fish_options(const peft::OptionValues& values);
std::string describe_fish_options(const FishOptions& options);

class FishMethod final : public peft::Method {
 public:
  explicit FishMethod(FishOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "fish"; }
  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override;
  std::vector<peft::Trainable> attach(model::Backbone& backbone) override;
  std::string describe() const override;
  std::optional<peft::IndexAccounting> index_accounting(const model::ModelConfig& config) const override;
  // merge: W.flat[idx] += values in place for every masked tensor; the hooks pass through meanwhile.
  bool can_merge() const override { return true; }
  void merge(model::Backbone& backbone) override;
  void unmerge(model::Backbone& backbone) override;
  void to(const c10::Device& device) override;

  // The mask's indices per weight (after attach, or once a mask was set).
  std::vector<peft::FixedIndices> fixed_indices() const override;
  // A checkpoint's mask: attach() uses it, no Fisher is computed (UsageError when `stored` is empty).
  void use_stored_indices(std::vector<peft::FixedIndices> stored) override;
  // True until a mask is known (no --fish.mask, no mask set): prepare() then computes it (collective), the
  // Fisher over `data` sharded by sample, and for every selection the top-k split across the ranks by
  // position (sparse/magnitude.h), and logs its counts (rank 0). attach() without prepare() makes a
  // magnitude or random mask alone, on the whole backbone; a Fisher mask it cannot make.
  bool needs_prepare() const override { return !mask_ && options_.mask_path.empty(); }
  void prepare(model::Backbone& backbone, const peft::TrainingData& data, comm::Communicator& comm) override;

  // --fish.refresh-every: recomputes the Fisher of the current model (values applied) over
  // `data` (collective) and moves the mask to its top-k. The count k is unchanged, so the
  // trainable tensor keeps its size (and its GradSync bucket): values at indices both masks hold
  // carry over in place, new indices start at 0, and the deltas of dropped indices are discarded.
  // Returns, per position of the new "fish.values", its old position (-1: new), for the optimizer state.
  int64_t refresh_every() const override { return options_.refresh_every; }
  peft::IndexRefresh refresh(model::Backbone& backbone, const peft::TrainingData& data,
                             comm::Communicator& comm) override;
  // --fish.dense-sync: "fish.values" travels at its flat positions in the eligible tensors
  // (--fish.include/--fish.exclude) laid end to end, their whole size on the wire.
  std::optional<peft::DenseSync> dense_sync(const model::ModelConfig& config) const override;

  const FishOptions& options() const { return options_; }
  // A mask computed beforehand; attach() then uses it.
  void set_mask(Mask mask) { mask_ = std::make_shared<Mask>(std::move(mask)); }
  const Mask* mask() const { return mask_.get(); }

 private:
  FishOptions options_;
  std::shared_ptr<Mask> mask_;
  // Where each masked tensor's values live in "fish.values"; the weight hooks read it at every
  // forward, so refresh() can move the mask without re-registering hooks.
  struct Slice {
    at::Tensor indices;  // int64 flat indices
    int64_t begin = 0, count = 0;
  };
  using Layout = std::map<std::string, Slice>;
  std::shared_ptr<Layout> layout_ = std::make_shared<Layout>();
  void set_layout();
  at::Tensor values_;                         // the trainable "fish.values" after attach()
  std::shared_ptr<bool> merged_ = std::make_shared<bool>(false);  // read by the weight hooks
  void add_delta(model::Backbone& backbone, double sign) const;
};

// The mask of `options` over `backbone` (collective when the Fisher is computed: every rank calls
// it). Fisher selection uses samples 0..min(samples, available)-1 of `sample`; magnitude / random
// need no data (`sample` may be empty). Metadata records how the mask was made.
// `comm` may be null for magnitude / random.
Mask compute_fish_mask(model::Backbone& backbone, const SampleFn& sample, int64_t available,
                       comm::Communicator* comm, const FishOptions& options);

// Summed over the sparse methods of the set, from the config alone. FISH's index bytes assume the kept entries spread over the tensors in
// proportion to their size (exact per-tensor counts with --fish.per-tensor; exact bytes with
// --fish.mask); DSEE's are exact counts with the widest-gap bound.
SparseAccounting sparse_accounting(const peft::MethodSet& methods, const model::ModelConfig& config);

// The fixed indices of every method of the set (Method::fixed_indices: FISH masks, DSEE supports), each weight's
// sorted flat indices encoded by sparse/index_codec: what a checkpoint stores beside the values.
// Call after apply() (a FISH mask may only be known then).
struct EncodedIndices {
  std::string name;  // "<method>:<weight name>"
  std::vector<uint8_t> bytes;
  int64_t count = 0;
  int64_t numel = 0;
};
std::vector<EncodedIndices> encoded_indices(const peft::MethodSet& methods);
// The inverse, for eval/export from a checkpoint and for resuming a run whose mask moved: hands every
// sparse method of `methods` the indices a checkpoint stored for it (by the names encoded_indices() gave
// them; Method::use_stored_indices), so FISH computes no Fisher and its values land on the same indices.
// Call before methods.apply(backbone). DSEE's supports are recomputed from the pretrained weights at
// attach (deterministic); the checkpoint's validation compares them. Throws dt::UsageError naming a
// method whose stored indices do not fit `config` (or, for FISH, are missing).
void restore_indices(const peft::MethodSet& methods, const std::vector<EncodedIndices>& indices,
                     const model::ModelConfig& config);

// ---- DSEE ----------------------------------------------------------------------------------------
struct DseeOptions {
  int64_t rank = 4;                            // --dsee.rank
  double alpha = 4.0;                          // --dsee.alpha (scale alpha / rank; default: = rank)
  int64_t sparse = 128;                        // --dsee.sparse: nonzeros of S per target
  std::string select = "grebsmo";              // --dsee.select grebsmo | magnitude
  std::vector<std::string> targets = {"q", "v"};  // --dsee.targets: q, k, v, o, wi, wo
};
DseeOptions dsee_options(const peft::OptionValues& values);

class DseeMethod final : public peft::Method {
 public:
  explicit DseeMethod(DseeOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "dsee"; }
  std::vector<model::TensorMeta> plan(const model::ModelConfig& config) const override;
  std::vector<peft::Trainable> attach(model::Backbone& backbone) override;
  std::string describe() const override;
  std::optional<peft::IndexAccounting> index_accounting(const model::ModelConfig& config) const override;
  // The fixed indices of S per target weight, after attach() (checkpoints store them).
  const Mask& support() const { return support_; }
  std::vector<peft::FixedIndices> fixed_indices() const override;
  // merge: W += (B·A + S)·alpha/r in place (S scattered at its fixed indices); the hooks pass through meanwhile.
  bool can_merge() const override { return true; }
  void merge(model::Backbone& backbone) override;
  void unmerge(model::Backbone& backbone) override;
  void to(const c10::Device& device) override;

 private:
  struct Attached {
    std::string weight;
    at::Tensor a, b, s, idx;  // s, idx undefined when --dsee.sparse is 0
  };
  void add_delta(model::Backbone& backbone, double sign) const;
  DseeOptions options_;
  Mask support_;
  std::vector<Attached> attached_;                                 // filled by attach()
  std::shared_ptr<bool> merged_ = std::make_shared<bool>(false);  // read by the weight hooks
};

// The `card` flat indices (sorted) of the sparse part of W ≈ L + S, L of rank `rank`, after `iters`
// alternations: L = best rank-`rank` approximation of W − S (SVD), S = the `card` largest |W − L|.
at::Tensor grebsmo_support(const at::Tensor& w, int64_t rank, int64_t card, int iters = 4);
// The `card` largest |W| (ties: lower flat index), sorted.
at::Tensor magnitude_support(const at::Tensor& w, int64_t card);

}  // namespace dt::sparse
