// peft/adapter/adapter.h — the modules that several adapter-style methods share.
//
// Design note (He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning"): the
// sequential adapter (Houlsby, Pfeiffer), the scaled parallel adapter and prefix tuning are three
// modifications of a hidden state at a named site; MAM is a prefix plus a parallel adapter, and
// Compacter is the Houlsby placement with PHM layers. So the pieces live here once:
//   * where adapters go: `houlsby_sites` (after each self-attention and each FFN) and `ffn_sites`;
//   * `Bottleneck`: down (d -> m) · activation · up (m -> d), with biases, as nn.Linear stores them;
//   * sequential and parallel attachment of a Bottleneck at output-hook sites;
//   * `prefix_*`: Li & Liang's reparameterized prefix keys/values for every attention.
// Each `*_plan` lists exactly the tensors the matching `*_attach` creates, in the same order, from
// the config alone (peft/method.h). Trainable tensors are float32 leaves; hooks convert to the
// hidden state's dtype at the boundary, as LoRA does.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "model/backbone.h"
#include "model/config.h"
#include "peft/method.h"

namespace dt::peft::adapter {

// ---- placement ------------------------------------------------------------------------------------

// Houlsby placement: the output of every self-attention block (".attn_out"; T5's cross-attention is
// left out, as adapter-transformers' default for T5 does) and of every FFN (".ffn_out"), in forward
// order. The sites' `out_features` are d_model.
std::vector<model::SiteInfo> houlsby_sites(const model::ModelConfig& config);
// Every FFN output site (".ffn_out"): Pfeiffer's placement and the parallel adapter's.
std::vector<model::SiteInfo> ffn_sites(const model::ModelConfig& config);

// ---- the bottleneck module ------------------------------------------------------------------------

enum class Activation { Relu, Gelu, Tanh, Silu };
// "relu" | "gelu" | "tanh" | "silu"; anything else is a UsageError naming `option`.
Activation parse_activation(const std::string& option, const std::string& value);
std::string activation_name(Activation a);
at::Tensor activate(Activation a, const at::Tensor& x);

// How the bottleneck starts. Both zero the up projection and the biases, so the adapter's output is
// exactly 0 and the model unchanged at step 0.
//   Houlsby: down ~ N(0, 1e-2²) truncated at 2σ (Houlsby et al., §3.6: "near-identity").
//   Lora:    down ~ U(±1/sqrt(d)), nn.Linear's kaiming_uniform(a = sqrt(5)) — He et al.'s code
//            ("--ffn_adapter_init_option lora") for the parallel adapter.
enum class Init { Houlsby, Lora };

// N(0, std²) truncated at ±2σ by redrawing the outliers (deterministic given torch's generator): the
// Houlsby draw, float32.
at::Tensor truncated_normal(const std::vector<int64_t>& shape, double std);

struct Bottleneck {
  at::Tensor down_weight;  // [m, d]
  at::Tensor down_bias;    // [m]
  at::Tensor up_weight;    // [d, m]
  at::Tensor up_bias;      // [d]
  // up(act(down(x))), computed in float32 and returned in x's dtype.
  at::Tensor forward(const at::Tensor& x, Activation act) const;
};

Bottleneck make_bottleneck(int64_t d, int64_t m, Init init);
// "<module>.down.weight", "<module>.down.bias", "<module>.up.weight", "<module>.up.bias".
std::vector<model::TensorMeta> bottleneck_plan(const std::string& module, int64_t d, int64_t m);
void append_bottleneck(const std::string& module, const Bottleneck& b, const std::string& method,
                       std::vector<Trainable>& out);

// ---- sequential and parallel adapters -------------------------------------------------------------

// h' = h + up(act(down(h))) at each site; trainables "<site>.adapter.{down,up}.{weight,bias}".
std::vector<model::TensorMeta> sequential_plan(const std::vector<model::SiteInfo>& sites, int64_t m);
std::vector<Trainable> sequential_attach(model::Backbone& backbone, const std::vector<model::SiteInfo>& sites,
                                         int64_t m, Activation act, const std::string& method);

// He et al.'s scaled parallel adapter at every FFN: h' = h + s · up(relu(down(x))), with x the
// FFN's input (the hook's x); trainables "<site>.parallel_adapter.{down,up}.{weight,bias}".
struct ParallelOptions {
  int64_t bottleneck = 512;
  double scale = 4.0;
};
std::vector<model::TensorMeta> parallel_plan(const model::ModelConfig& config, const ParallelOptions& options);
std::vector<Trainable> parallel_attach(model::Backbone& backbone, const ParallelOptions& options,
                                       const std::string& method);

// ---- prefix tuning (Li & Liang) -------------------------------------------------------------------

// One group of attentions that share a prefix network, as the prefix-tuning code has one per kind of
// attention (BART: encoder self, decoder self, decoder cross). T5: "encoder", "decoder", "cross";
// BERT: "encoder"; Llama: "decoder". `attentions` are the prefix-hook names (the module paths).
struct PrefixGroup {
  std::string name;
  std::vector<std::string> attentions;
  int64_t kv_heads = 0;  // heads of the keys/values (Llama: the GQA kv heads), [B, kv_heads, P, D]
  int64_t head_dim = 0;
  int64_t kv_dim() const { return kv_heads * head_dim; }
};
std::vector<PrefixGroup> prefix_groups(const model::ModelConfig& config);

struct PrefixOptions {
  int64_t length = 30;
  int64_t hidden = 512;
};
// Per group: "prefix.<group>.embedding" [P, d_model], "prefix.<group>.mlp.0.{weight,bias}" (d -> h),
// "prefix.<group>.mlp.2.{weight,bias}" (h -> 2 · layers · kv_dim).
std::vector<model::TensorMeta> prefix_plan(const model::ModelConfig& config, const PrefixOptions& options);
std::vector<Trainable> prefix_attach(model::Backbone& backbone, const PrefixOptions& options,
                                     const std::string& method);

}  // namespace dt::peft::adapter
