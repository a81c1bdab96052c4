#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <set>
#include <sstream>

#include "model/device.h"
#include "peft/method.h"
#include "peft/s3delta/s3delta.h"  // register_s3delta
#include "util/error.h"
#include "util/format.h"

namespace dt::peft {

Registry& Registry::global() {
  static Registry* registry = [] {
    auto* r = new Registry();
    register_full(*r);
    register_bitfit(*r);
    register_lora(*r);
    register_houlsby(*r);
    register_pfeiffer(*r);
    register_parallel_adapter(*r);
    register_prefix(*r);
    register_prompt(*r);
    register_ia3(*r);
    register_compacter(*r);
    register_mam(*r);
    register_lst(*r);
    register_shared_adapter(*r);
    register_hyperformer(*r);
    register_hyperprompt(*r);
    register_attempt(*r);
    register_s3delta(*r);
    return r;
  }();
  return *registry;
}

void Registry::add(MethodInfo info) {
  for (const auto& m : methods_) {
    DT_CHECK(m.name != info.name, "PEFT method '" + info.name + "' is registered twice");
  }
  methods_.push_back(std::move(info));
}

const MethodInfo& Registry::get(const std::string& name) const {
  for (const auto& m : methods_) {
    if (m.name == name) return m;
  }
  std::string known;
  for (const auto& m : methods_) known += (known.empty() ? "" : ", ") + m.name;
  throw_usage_error("unknown --method '" + name + "' (known: " + known + ")");
}

std::vector<std::string> Registry::names() const {
  std::vector<std::string> out;
  for (const auto& m : methods_) out.push_back(m.name);
  return out;
}

std::vector<OptionSpec> Registry::all_options() const {
  std::vector<OptionSpec> out;
  for (const auto& m : methods_) out.insert(out.end(), m.options.begin(), m.options.end());
  return out;
}

std::vector<std::string> Registry::mergeable() const {
  std::vector<std::string> out;
  // Every registered option at its default: a method may read another method's section (sparse_adapter
  // sizes its bottlenecks by --houlsby.bottleneck, ...).
  const OptionValues defaults = OptionValues::defaults(all_options());
  for (const auto& m : methods_) {
    if (m.create(defaults)->can_merge()) out.push_back(m.name);
  }
  return out;
}

std::vector<model::TensorMeta> head_plan(const model::ModelConfig& config, int64_t num_labels) {
  if (num_labels <= 0) return {};
  switch (config.arch) {
    case model::Arch::Llama: return {{"score.weight", {num_labels, config.d_model}}};
    case model::Arch::Bert:
      return {{"classifier.weight", {num_labels, config.d_model}}, {"classifier.bias", {num_labels}}};
    case model::Arch::T5: return {};  // classes are label words decoded by the frozen LM head
  }
  return {};
}

namespace {

std::vector<std::string> split_plus(const std::string& spec) {
  std::vector<std::string> parts;
  std::stringstream in(spec);
  std::string part;
  while (std::getline(in, part, '+')) {
    if (part.empty()) throw_usage_error("--method '" + spec + "': empty method name");
    parts.push_back(part);
  }
  if (parts.empty()) throw_usage_error("--method is empty");
  return parts;
}
}  // namespace

MethodSet MethodSet::from_names(const std::string& spec, const OptionValues& values,
                                const std::vector<std::string>& tasks) {
  const std::vector<std::string> task_names = tasks.empty() ? std::vector<std::string>{"default"} : tasks;
  MethodSet set;
  std::set<std::string> seen;
  std::string forward_owner;
  for (const auto& name : split_plus(spec)) {
    if (!seen.insert(name).second) throw_usage_error("--method '" + spec + "' names '" + name + "' twice");
    set.methods_.push_back(Registry::global().get(name).create(values));
    set.methods_.back()->set_tasks(task_names);
    if (set.methods_.back()->overrides_forward()) {
      if (!forward_owner.empty()) {
        throw_usage_error("--method '" + spec + "': '" + forward_owner + "' and '" + name +
                          "' both run the backbone themselves and cannot be combined");
      }
      forward_owner = name;
    }
  }
  return set;
}

void Method::merge(model::Backbone&) {
  throw_usage_error("method '" + name() + "' cannot be merged into the backbone's weights");
}
void Method::unmerge(model::Backbone&) {
  throw_usage_error("method '" + name() + "' cannot be merged into the backbone's weights");
}
IndexRefresh Method::refresh(model::Backbone&, const TrainingData&, comm::Communicator&) {
  DT_FAIL("method '" + name() + "' has no indices to refresh (refresh_every() is 0)");
}

model::ForwardResult MethodSet::forward(model::Backbone& backbone, const model::Batch& batch,
                                        const model::ForwardOptions& options) const {
  for (const auto& m : methods_) {
    if (m->overrides_forward()) return m->forward(backbone, batch, options);
  }
  return backbone.forward(batch, options);
}

bool MethodSet::can_merge() const {
  for (const auto& m : methods_) {
    if (!m->can_merge()) return false;
  }
  return true;
}

void MethodSet::merge(model::Backbone& backbone) const {
  for (const auto& m : methods_) {
    if (!m->can_merge()) {
      throw_usage_error("method '" + m->name() + "' cannot be merged into the backbone's weights (mergeable: " +
                        fmt::format("{}", fmt::join(Registry::global().mergeable(), ", ")) + ")");
    }
  }
  for (const auto& m : methods_) m->merge(backbone);
}

void MethodSet::unmerge(model::Backbone& backbone) const {
  for (auto it = methods_.rbegin(); it != methods_.rend(); ++it) (*it)->unmerge(backbone);
}

void MethodSet::to(const c10::Device& device, const std::vector<Trainable>& trainables) const {
  for (const auto& t : trainables) {
    at::Tensor tensor = t.tensor;  // the same tensor: set_data moves it for every holder
    model::move_tensor(tensor, device);
  }
  for (const auto& m : methods_) m->to(device);
}

bool MethodSet::needs_prepare() const {
  for (const auto& m : methods_) {
    if (m->needs_prepare()) return true;
  }
  return false;
}

void MethodSet::prepare(model::Backbone& backbone, const TrainingData& data, comm::Communicator& comm) const {
  for (const auto& m : methods_) {
    if (m->needs_prepare()) m->prepare(backbone, data, comm);
  }
}

bool MethodSet::refreshes_indices() const {
  for (const auto& m : methods_) {
    if (m->refresh_every() > 0) return true;
  }
  return false;
}

std::vector<model::TensorMeta> MethodSet::plan(const model::ModelConfig& config, int64_t num_labels) const {
  std::vector<model::TensorMeta> out;
  for (const auto& m : methods_) {
    auto metas = m->plan(config);
    out.insert(out.end(), metas.begin(), metas.end());
  }
  for (auto& meta : head_plan(config, num_labels)) out.push_back(std::move(meta));
  return out;
}

std::vector<Trainable> MethodSet::apply(model::Backbone& backbone) const {
  for (auto& [name, tensor] : backbone.named_parameters()) tensor.requires_grad_(false);
  std::vector<Trainable> out;
  std::set<std::string> names;
  auto add = [&](Trainable t) {
    DT_CHECK(names.insert(t.name).second,
             "two methods create or train the same tensor '" + t.name + "' (--method " + describe() + ")");
    out.push_back(std::move(t));
  };
  for (const auto& m : methods_) {
    for (auto& t : m->attach(backbone)) add(std::move(t));
  }
  for (auto& [name, tensor] : backbone.named_parameters()) {
    if (model::is_task_head(name) && !names.count(name)) {
      tensor.requires_grad_(true);
      add(Trainable{name, tensor, "head"});
    }
  }
  return out;
}

std::string MethodSet::describe() const {
  std::string out;
  for (const auto& m : methods_) out += (out.empty() ? "" : "+") + m->describe();
  return out;
}

std::string accounting_line(int64_t trainable, int64_t all) {
  const double pct = all > 0 ? 100.0 * static_cast<double>(trainable) / static_cast<double>(all) : 0.0;
  return fmt::format("trainable params: {} || all params: {} || trainable%: {:.4f}", with_commas(trainable),
                     with_commas(all), pct);
}

}  // namespace dt::peft
