// model/hooks.cpp — the HookSet that backbones consult at every named site (see hooks.h).
#include "model/hooks.h"

#include "util/error.h"

namespace dt::model {

void HookSet::set_weight(const std::string& param, WeightHook hook) {
  // Two methods editing one weight would compose in an order nobody chose; refuse instead.
  DT_CHECK(weight_.count(param) == 0, "a weight hook is already attached to '" + param + "'",
           "combine the methods' deltas in one hook, or attach them to different parameters");
  weight_.emplace(param, std::move(hook));
}

void HookSet::set_prefix(const std::string& attention, PrefixHook hook) {
  DT_CHECK(prefix_.count(attention) == 0,
           "a prefix hook is already attached to '" + attention + "'",
           "one prefix method per attention; concatenate the prefixes in a single hook");
  prefix_.emplace(attention, std::move(hook));
}

at::Tensor HookSet::output(const std::string& site, const at::Tensor& h, const at::Tensor& x) const {
  auto it = output_.find(site);
  if (it == output_.end()) return h;
  at::Tensor out = h;
  // Registration order: a sequential adapter added after LoRA sees LoRA's output, and so on.
  for (const auto& hook : it->second) out = hook(out, x);
  return out;
}

at::Tensor HookSet::weight(const std::string& param, const at::Tensor& w) const {
  auto it = weight_.find(param);
  return it == weight_.end() ? w : it->second(w);
}

std::pair<at::Tensor, at::Tensor> HookSet::prefix(const std::string& attention, int64_t batch) const {
  auto it = prefix_.find(attention);
  DT_CHECK(it != prefix_.end(), "no prefix hook is attached to '" + attention + "'");
  return it->second(batch);
}

at::Tensor HookSet::input(const std::string& site, const at::Tensor& e) const {
  auto it = input_.find(site);
  if (it == input_.end()) return e;
  at::Tensor out = e;
  for (const auto& hook : it->second) out = hook(out);
  return out;
}

void HookSet::clear() {
  output_.clear();
  weight_.clear();
  prefix_.clear();
  input_.clear();
}

}  // namespace dt::model
