// launch/search.h — `deltatune search --method s3delta`: the S3Delta structure search, data-parallel.
//
// Design note: the math lives in peft/s3delta (search space, gated modules, the shifted global sigmoid,
// the greedy fill, the structure file); this is the loop, built from train's pieces: a DistributedSampler
// per slice of the training set (the held-out slice feeds the structure steps, the rest the weight steps),
// one GradSync for the module weights and the task head and one for the structure parameters α (both
// all-reduced every step, their bytes counted apart), dist::AdamW for each, the learning-rate schedule,
// gradient clipping. Per step, first order (DARTS-style alternation):
//   1. structure: gates z = relaxed Bernoulli of p(α) (with α's graph), forward a held-out batch,
//      backward into α only (autograd's `inputs`: no module weight is touched and the weights' GradSync
//      does not fire), all-reduce, clip, AdamW on α (--s3delta.alpha-lr, the schedule's shape);
//   2. weights: gates sampled again from the updated α, detached, forward a training batch, backward
//      (GradSync all-reduces while backward runs), clip, AdamW (--train.lr).
// The noise u of both gates comes from a generator seeded by (--train.seed, step): the same on every rank,
// so every rank computes the same gates and, from identical averaged gradients, the same α's. At the end
// every rank selects the same structure (checked: its JSON's hash is agreed) and rank 0 writes it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "dist/grad_sync.h"
#include "dist/optim.h"
#include "model/backbone.h"
#include "peft/s3delta/s3delta.h"

namespace dt::launch {

// The supernet: every candidate attached behind a gate, the α's, and what the weight steps train.
class StructureSearch {
 public:
  // Freezes the backbone, attaches every candidate of `space` (tensors drawn from torch's generator:
  // seed it first) behind gates, unfreezes the task head, and moves what trains to `device`.
  StructureSearch(model::Backbone& backbone, const peft::s3delta::SpaceOptions& space, int64_t budget,
                  const peft::s3delta::SearchOptions& options, const c10::Device& device);

  const peft::s3delta::SearchOptions& options() const { return options_; }
  const std::vector<peft::s3delta::Candidate>& candidates() const { return candidates_; }
  const std::vector<int64_t>& sizes() const { return sizes_; }
  int64_t budget() const { return budget_; }
  int64_t space_params() const;
  // The module weights then the task head (what the weight steps train), and the α's [M].
  const dist::NamedTensors& weights() const { return weights_; }
  const at::Tensor& alphas() const { return alphas_; }

  // Gates for the next forward from noise u [M] (ignored without Gumbel sampling): with α's graph for a
  // structure step, detached for a weight step.
  void set_gates(const at::Tensor& u, bool structure_step);
  // The loss of `batch` (on the device) through the gated supernet.
  at::Tensor loss(const model::Batch& batch) { return backbone_.forward(batch).loss; }
  // p at the current α's (no noise), on the host: what the structure is chosen by.
  std::vector<double> probabilities() const;
  std::vector<double> host_alphas() const;

 private:
  model::Backbone& backbone_;
  peft::s3delta::SearchOptions options_;
  std::vector<peft::s3delta::Candidate> candidates_;
  std::vector<int64_t> sizes_;
  int64_t budget_ = 0;
  std::shared_ptr<peft::s3delta::Gates> gates_ = std::make_shared<peft::s3delta::Gates>();
  at::Tensor alphas_;
  dist::NamedTensors weights_;
};

// Batches by sample id of the two slices (ids 0..size-1 of each).
struct SearchData {
  std::function<model::Batch(const std::vector<int64_t>& ids)> train, heldout;
  int64_t train_size = 0, heldout_size = 0;
};

struct SearchLoopOptions {
  int64_t steps = 100;
  int64_t batch_size = 16;  // per rank, both steps
  uint64_t seed = 42;
  double lr = 1e-3;         // weights
  double clip = 1.0;        // weights' global gradient norm (0: off)
  int64_t warmup_steps = 0; // weights only (the paper's alpha_warmup_steps is 0)
  std::string schedule = "linear";
  double weight_decay = 0;
  dist::GradSyncOptions grad_sync;
};

struct SearchStepStats {
  int64_t step = 0;
  double loss = 0, heldout_loss = 0;  // averaged over ranks
  double lr = 0, alpha_lr = 0, seconds = 0;
  dist::GradSyncStats weights, alphas;
};

// The bi-level loop (collective: every rank calls it with its shard's data). Gradients travel over `comm`
// (NCCL or MPI), the logged losses over `cpu_comm`. `on_step` runs after each step.
void run_search_loop(StructureSearch& search, const SearchData& data, const SearchLoopOptions& options,
                     comm::Communicator& comm, comm::Communicator& cpu_comm,
                     const std::function<void(const SearchStepStats&)>& on_step = {});

// The structure the search chose: every candidate with its p and α, the chosen ones by the greedy fill.
peft::s3delta::Structure chosen_structure(const StructureSearch& search, const peft::s3delta::SpaceOptions& space,
                                          const model::ModelConfig& config);

}  // namespace dt::launch
