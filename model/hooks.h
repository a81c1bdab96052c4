// model/hooks.h — named insertion points where PEFT methods modify a backbone's forward pass.
//
// Design note (He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning"): a PEFT
// method is a function that modifies a hidden state at an insertion point. The backbone names every
// such point (a "site") and consults a HookSet there; the backbone never learns which method is
// attached. Four kinds of modification cover the literature:
//   * output hooks   h' = f(h, x): at a site, the site's output h (and its input x) becomes h'.
//                    Sequential adapters use h, parallel adapters and LoRA use x, (IA)^3 rescales h,
//                    BitFit adds a bias. Several hooks at one site run in registration order.
//   * weight hooks   W' = g(W): the effective weight of a linear layer (FISH: W + scatter(values),
//                    DSEE: W + (BA + S)·scale). Keyed by the parameter's name.
//   * prefix hooks   (K_p, V_p) = p(batch): extra keys/values prepended in an attention (prefix tuning).
//   * input hooks    e' = q(e): the embedded input sequence (prompt tuning prepends soft tokens).
// Multi-task runs: hooks may depend on the batch's task (task()), one task per forward.
//
// Site names: "<module path>.<site>", module paths follow the HF parameter names of the backbone
// (e.g. T5 "encoder.block.3.layer.0.SelfAttention"), and the site suffixes are
//   attention:  .q .k .v .o (projection outputs; x = projection input), .attn_out (attention block
//               output before the residual add)
//   feed-forward: .ffn_in (normed input), .wi (intermediate after activation), .ffn_out (output before
//               the residual add; x = the FFN input)
//   block:      .residual (stream after the block's last residual add), .block_out
//   layer norm: .ln (output of each layer norm; site = the norm's module path + ".ln")
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dt::model {

enum class SiteKind { Projection, AttentionOutput, FfnInput, FfnIntermediate, FfnOutput, Residual,
                      BlockOutput, LayerNorm, Embedding, Head };

// Describes one site: its name, kind and the feature sizes of its input x and output h.
struct SiteInfo {
  std::string name;
  SiteKind kind;
  int64_t in_features = 0;
  int64_t out_features = 0;
  std::string weight;  // name of the linear layer's weight parameter at this site, if any
};

using OutputHook = std::function<at::Tensor(const at::Tensor& h, const at::Tensor& x)>;
using WeightHook = std::function<at::Tensor(const at::Tensor& weight)>;
// Returns {K_prefix, V_prefix}, each [batch, heads, prefix_len, head_dim].
using PrefixHook = std::function<std::pair<at::Tensor, at::Tensor>(int64_t batch)>;
using InputHook = std::function<at::Tensor(const at::Tensor& embedded)>;

class HookSet {
 public:
  void add_output(const std::string& site, OutputHook hook) { output_[site].push_back(std::move(hook)); }
  void set_weight(const std::string& param, WeightHook hook);  // one per parameter; a second throws
  void set_prefix(const std::string& attention, PrefixHook hook);
  void add_input(const std::string& site, InputHook hook) { input_[site].push_back(std::move(hook)); }

  // Called by backbones. Each returns its argument unchanged when nothing is attached.
  at::Tensor output(const std::string& site, const at::Tensor& h, const at::Tensor& x) const;
  at::Tensor weight(const std::string& param, const at::Tensor& w) const;
  bool has_prefix(const std::string& attention) const { return prefix_.count(attention) != 0; }
  std::pair<at::Tensor, at::Tensor> prefix(const std::string& attention, int64_t batch) const;
  at::Tensor input(const std::string& site, const at::Tensor& e) const;

  bool empty() const { return output_.empty() && weight_.empty() && prefix_.empty() && input_.empty(); }
  void clear();

  // The task of the batch being forwarded (Batch::task, set by the backbone as its forward starts):
  // task-conditioned methods (Hyperformer, HyperPrompt, per-task adapters) read it in their hooks.
  void set_task(int64_t task) { task_ = task; }
  int64_t task() const { return task_; }

 private:
  std::map<std::string, std::vector<OutputHook>> output_;
  std::map<std::string, WeightHook> weight_;
  std::map<std::string, PrefixHook> prefix_;
  std::map<std::string, std::vector<InputHook>> input_;
  int64_t task_ = 0;
};

}  // namespace dt::model
