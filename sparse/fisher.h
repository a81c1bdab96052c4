// sparse/fisher.h — which tensors a sparse mask is chosen from, and the empirical Fisher over them.
//
// Design note (FISH, Sung et al. 2021, and its code's calculate_the_importance_label): the score of a
// weight is the empirical Fisher diagonal, the squared gradient of the loss on the TRUE label,
// computed one example at a time (batch size 1) and summed over N examples:
//     F = sum_i (d loss_i / d W)^2.
// A faster approximation (FisherKind::Batch) takes one backward per batch of B examples:
//     F ~= sum_b B^2 * (d mean_loss_b / d W)^2 = sum_b (sum_{i in b} g_i)^2,
// i.e. each example of the batch is credited B x the squared gradient of the batch-mean loss. It
// equals the per-example Fisher plus the cross terms sum_{i != j} g_i g_j, which cancel only when
// the per-example gradients are uncorrelated (near a minimum); early in fine-tuning they favour the
// weights whose gradients agree across examples. B = 1 gives the per-example Fisher exactly.
// Samples are sharded over ranks (sample i, or batch i, goes to rank i mod W) and the partial sums
// are all-reduced, so every rank ends with the same Fisher; only the summation order differs from a
// one-rank run. The model runs in eval mode (no dropout), as the Fisher is a property of the model.
//
// Eligible tensors: the backbone's parameters (model::describe order), filtered by comma-separated
// shell globs on their HF names (include, then exclude); the task head is never eligible — it trains
// densely anyway (peft::MethodSet adds it).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "model/backbone.h"
#include "model/config.h"

namespace dt::sparse {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// "a,b" -> {"a", "b"} (empty entries dropped).
std::vector<std::string> split_globs(const std::string& text);
// Shell-style match ('*' also crosses dots): "*.q.weight" matches "encoder.block.0.layer.0.SelfAttention.q.weight".
bool glob_match(const std::string& pattern, const std::string& name);
bool matches_any(const std::vector<std::string>& patterns, const std::string& name);

// The eligible tensors of `config` (no allocation), in describe() order.
std::vector<model::TensorMeta> eligible_tensors(const model::ModelConfig& config,
                                                const std::vector<std::string>& include,
                                                const std::vector<std::string>& exclude);
int64_t eligible_params(const model::ModelConfig& config, const std::vector<std::string>& include,
                        const std::vector<std::string>& exclude);

enum class FisherKind { PerSample, Batch };
FisherKind parse_fisher_kind(const std::string& name);  // "sample" | "batch"; UsageError otherwise

// Memory at scale (T5-3B: a float32 Fisher of every weight is 11.4 GB, a backward's bf16 gradients
// 5.7 GB, per rank). Sharded: each rank keeps the float32 Fisher only of the tensors it reads in
// top_k_magnitude (sparse/magnitude.h: tensors_read_by), so the node holds one Fisher, not one per
// rank. The samples still shard over ranks, in rounds of one batch per rank; after each round the
// squared gradients are summed over ranks (one all-reduce per tensor) and added where they are kept,
// instead of one all-reduce at the end. Same Fisher up to the summation order (bit for bit when there
// is one round, i.e. at most one batch per rank); more traffic (the gradients' size, in float32, per
// round). Auto: sharded over mpi with more than one rank when the float32 Fisher of the eligible
// tensors exceeds shard_above_bytes (the collectives carry CPU tensors; over nccl every rank keeps it).
enum class FisherShard { Auto, On, Off };
FisherShard parse_fisher_shard(const std::string& name);  // "auto" | "on" | "off"; UsageError otherwise

struct FisherOptions {
  FisherKind kind = FisherKind::PerSample;
  int64_t batch_size = 16;  // FisherKind::Batch only
  std::vector<std::string> include = {"*"};
  std::vector<std::string> exclude;
  FisherShard shard = FisherShard::Auto;
  int64_t shard_above_bytes = int64_t{1} << 30;
  bool per_tensor_top_k = false;  // the top-k's reading plan (TopKOptions::per_tensor), when sharded
  // The gradients of one backward are taken for consecutive eligible tensors of at most this many
  // bytes at a time (one autograd pass each over the retained graph of the forward), so a rank never
  // holds every gradient at once: the sharded T5-3B takes 11 passes per batch instead of 5.7 GB.
  int64_t grad_group_bytes = int64_t{512} << 20;
};

// The samples `ids` (each in [0, N)) as one batch with labels; called with one id per call in
// per-sample mode. Each rank calls it only for its own share.
using SampleFn = std::function<model::Batch(const std::vector<int64_t>& ids)>;

// The Fisher of the eligible tensors over samples 0..num_samples-1, summed over ranks (collective:
// every rank calls it with the same arguments). The backbone's requires_grad flags and gradients are
// left as they were; it is left in eval mode (set_training(true) before training). Returns (name,
// float32 CPU tensor of the parameter's shape); sharded, the tensors this rank does not read in the
// top-k are zero-stride zeros of their shape (no storage): only top_k_magnitude with the same comm
// and per_tensor may select from them.
bool fisher_is_sharded(const model::ModelConfig& config, const comm::Communicator& comm, const FisherOptions& options);
NamedTensors compute_fisher(model::Backbone& backbone, const SampleFn& sample, int64_t num_samples,
                            comm::Communicator& comm, const FisherOptions& options = {});

}  // namespace dt::sparse
