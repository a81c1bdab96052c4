// peft/s3delta/s3delta.h — S3Delta (Hu et al., NeurIPS 2022, "Sparse Structure Search for Delta Tuning";
// the paper's S³PET): which delta modules to train, searched under a parameter budget.
//
// Design note. The search space is one candidate module at every position the backbone offers
// (model::describe_sites), of four kinds:
//   lora     B·A (rank --s3delta.lora-r) on every linear projection: q, k, v, o of every attention (T5's
//            cross-attention included) as output hooks, the FFN's input and output linears (wi, wo) as
//            weight hooks, as peft/lora does; A ~ U(±1/√in), B = 0;
//   bitfit   a zero-initialized bias on every linear output (q, k, v, o, the FFN intermediate after the
//            activation, the FFN output) and after every layer norm, as peft/bitfit adds them;
//   adapter  a Houlsby bottleneck h + up(act(down(h))) after every self-attention and every FFN
//            (adapter::houlsby_sites), down ~ N(0, 1e-2²), up = 0;
//   ln       a multiplicative gain on every layer norm's output, ones at init (the paper's LNFit: a
//            zero-initialized parallel norm weight, i.e. the same function).
// Every module starts as the identity, so the supernet computes the backbone at step 0.
//
// Search (launch/search.cpp runs the loop). Module i has a structure parameter α_i (0 at init) and its
// delta is multiplied by a gate z_i. The paper's shifted global sigmoid makes the budget part of the
// gate: p_i = σ((α_i − b)/β), where the shift b solves Σ_i n_i·p_i = B (n_i: the module's parameters,
// B: the budget; bisection on the host, no gradient through b, as the paper's fsolve), so the expected
// size of a sampled structure is the budget whatever the α's. With the paper's --shift_detach, p is
// rescaled by Σp / stop_gradient(Σp) (same value, coupled gradient). Training samples a relaxed Bernoulli
// z_i = σ(logit(u_i) + logit(p_i)), u ~ U(0, 1) (the paper's Gumbel sampling with stretch r = 1, l = 0,
// i.e. z = s). Bi-level, first order (DARTS-style alternation, the paper's using_darts without the
// second-order virtual step): per step, α takes an AdamW step on the loss of a held-out batch (the
// module weights fixed), then the module weights and the task head take one on a training batch (z
// fixed). At the end the modules are chosen by p, greedily (select_under_budget).
//
// Simplified against the paper's code: first order only (its default unrolls a virtual weight step for a
// second-order α gradient); plain bottleneck adapters where S3PET-M has low-rank (rank-1 factored) ones of
// the same reduction 32; GELU (erf) for gelu_new; no dev-set evaluation during the search to keep the
// best-validation α's (the last α's are used).
//
// Retrain: `train --structure FILE` attaches exactly the chosen modules, ungated, from scratch (the
// registered method "s3delta"); plan() counts them from the config and the file alone.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/backbone.h"
#include "model/config.h"
#include "peft/method.h"

namespace dt::peft {
void register_s3delta(Registry& registry);
}  // namespace dt::peft

namespace dt::peft::s3delta {

// ---- the search space --------------------------------------------------------------------------------

enum class Kind { Lora, Bitfit, Adapter, LnGain };
const char* kind_name(Kind kind);  // "lora", "bitfit", "adapter", "ln"

struct SpaceOptions {
  int64_t lora_r = 1;        // the paper's S3PET search space: LoRA of rank 1
  double lora_alpha = 16.0;  // OpenDelta's LoraConfig default, which the paper's code uses
  int64_t bottleneck = 0;    // adapter bottleneck m; 0: d_model / 32 (the paper's reduction factor), at least 1
  std::vector<Kind> kinds = {Kind::Lora, Kind::Bitfit, Kind::Adapter, Kind::LnGain};
};
// "lora,bitfit,adapter,ln" (any subset, any order); UsageError naming `option` otherwise.
std::vector<Kind> parse_kinds(const std::string& option, const std::string& text);
std::string kinds_text(const std::vector<Kind>& kinds);
// The bottleneck the adapters get on `config` (resolves 0).
int64_t adapter_bottleneck(const model::ModelConfig& config, const SpaceOptions& options);

struct Candidate {
  std::string name;    // "model.layers.0.self_attn.q_proj.lora", "<site>.bitfit", "<site>.adapter", "<site>.ln_gain"
  Kind kind = Kind::Lora;
  std::string site;    // the hook site; empty for LoRA on an FFN linear (a weight hook)
  std::string weight;  // LoRA: the adapted linear's weight parameter
  int64_t in = 0, out = 0;  // LoRA: the linear's in/out features; others: the site's features
  std::vector<model::TensorMeta> tensors;  // what it trains, in registration order
  int64_t params() const;
};

// Every candidate of the kinds asked for, in forward (site) order: the same list on every rank and for
// plan and attach. Names are unique.
std::vector<Candidate> search_space(const model::ModelConfig& config, const SpaceOptions& options);

// The gate of every candidate during a search: z [M] (float32, on the training device), replaced before
// every forward; hooks multiply their module's delta by z[i]. Retraining attaches without gates.
struct Gates {
  at::Tensor z;
};

// Creates the candidates' tensors (float32 leaves on the host, torch's generator) and hooks them into
// `backbone`, in order. `gates`: the i-th candidate's delta is scaled by gates->z[i]; nullptr: ungated.
std::vector<Trainable> attach_candidates(model::Backbone& backbone, const std::vector<Candidate>& candidates,
                                         const SpaceOptions& options, std::shared_ptr<const Gates> gates,
                                         const std::string& method = "s3delta");

// ---- gates: the shifted global sigmoid -------------------------------------------------------------

// The shift b with Σ_i sizes_i·σ((alphas_i − b)/beta) = budget·(1 − 1e-7) (the paper's target), found by
// bisection in double precision. When the budget covers every module (budget >= Σ sizes) there is none:
// -infinity (every p is 1).
double solve_shift(const std::vector<double>& alphas, const std::vector<int64_t>& sizes, int64_t budget,
                   double beta);
// p = σ((alphas − shift)/beta), kept inside [1e-6, 1 − 1e-6] by a constant offset (the gradient passes, as
// the paper's dp), then p·stop_gradient(Σp)/Σp when shift_detach (same values; the paper's default).
at::Tensor gate_probabilities(const at::Tensor& alphas, double shift, double beta, bool shift_detach = true);
// The relaxed Bernoulli sample σ(logit(u) + logit(p)) for u in (0, 1) (same shape as p).
at::Tensor relaxed_bernoulli(const at::Tensor& p, const at::Tensor& u);

// ---- choosing the structure --------------------------------------------------------------------------

// Greedy fill, the paper's hard_forward_structure: candidates by score descending (ties: the earlier
// candidate first), each taken when it still fits (running total + size <= budget), the others skipped
// (the fill goes on past them). So the result meets the budget exactly in this sense: its total is at
// most the budget, and no candidate left out fits into what remains (every one is larger than budget −
// total). Indices in candidate order.
struct Selection {
  std::vector<size_t> chosen;
  int64_t total = 0;
};
Selection select_under_budget(const std::vector<int64_t>& sizes, const std::vector<double>& scores, int64_t budget);
// "" when `chosen` meets `budget` exactly (above); otherwise why not (over budget, or a left-out candidate
// that fits).
std::string budget_violation(const std::vector<int64_t>& sizes, const std::vector<size_t>& chosen, int64_t budget);

// ---- options (--s3delta.*) ---------------------------------------------------------------------------

// What `deltatune search` reads besides the space (the paper's defaults, see register_s3delta).
struct SearchOptions {
  double budget = 1e-4;       // a fraction of the backbone's parameters
  int64_t budget_params = 0;  // > 0: the budget in parameters (wins over the fraction)
  double heldout = 0.5;       // the slice of the training set the α steps read (the paper: half)
  double alpha_lr = 0.1;
  double alpha_clip = 2.0;    // global L2 norm of the α gradient (the paper's clip_grad_norm)
  double beta = 1.0;          // the gate temperature β
  bool gumbel = true;         // sample relaxed Bernoulli gates while searching (false: z = p)
};
// Both read and check the parsed --s3delta.* values (UsageError on a bad one).
SpaceOptions space_options(const OptionValues& values);
SearchOptions search_options(const OptionValues& values);
// The budget in parameters: --s3delta.budget-params, else floor(fraction × backbone parameters).
int64_t budget_params(const SearchOptions& options, int64_t backbone_params);

// ---- the structure file (search writes it, train --structure reads it) -----------------------------

struct StructureModule {
  std::string name;
  std::string kind;
  int64_t params = 0;
  double p = 0;      // the gate probability at the end of the search
  double alpha = 0;  // the structure parameter
  bool chosen = false;
};

struct Structure {
  std::string path;  // where it was read from (messages)
  // The backbone searched: its name, its config (model::config_metadata: what must match on retrain),
  // its parameter count (what the budget fraction is of) and, for a weights file, its sha256.
  std::string backbone_name;
  std::map<std::string, std::string> backbone_config;
  int64_t backbone_params = 0;
  std::string weights_sha256;
  SpaceOptions space;   // bottleneck resolved (never 0 in a file)
  double budget_fraction = 0;  // 0 when the budget was given in parameters
  int64_t budget_params = 0;
  std::map<std::string, std::string> search;  // how it was searched (task, steps, ranks, seed, ...), as text
  std::vector<StructureModule> modules;     // the chosen modules, in search-space order: what train attaches
  std::vector<StructureModule> candidates;  // every candidate with its p and α (chosen ones marked); optional
  int64_t total_params() const;             // of the chosen modules
};

// The JSON text of a structure (stable key order; what search writes and ranks compare).
std::string structure_json(const Structure& s);
// Reads and validates FILE: a UsageError naming it for a missing or unreadable file, bad JSON, a missing
// key, an unknown kind, or a total that does not add up.
Structure read_structure(const std::string& path);
// Writes atomically (a temporary file, then rename); UsageError naming the file when it cannot.
void write_structure(const Structure& s, const std::string& path);
// A short identity of what retraining attaches (the chosen names and the module options), for
// describe(): a resumed run or a checkpoint's eval with another structure is refused.
std::string structure_id(const Structure& s);
// The chosen candidates of `s` on `config`, in search-space order. UsageError naming the file when the
// config is not the one searched (listing the keys that differ) or a module is not a candidate of the
// same size there.
std::vector<Candidate> chosen_candidates(const Structure& s, const model::ModelConfig& config);

}  // namespace dt::peft::s3delta
