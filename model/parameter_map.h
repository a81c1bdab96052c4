#pragma once
// A backbone's parameters keyed by HF name: what methods look weights up in to attach to, merge into or score
// them (one helper instead of a map built by hand at each of those places). Kept out of backbone.h so that
// adding it did not recompile every file that includes the backbone.
#include <map>
#include <string>

#include "model/backbone.h"

namespace dt::model {

inline std::map<std::string, at::Tensor> parameters_by_name(const Backbone& backbone) {
  std::map<std::string, at::Tensor> by_name;
  for (auto& [name, tensor] : backbone.named_parameters()) by_name.emplace(std::move(name), std::move(tensor));
  return by_name;
}

}  // namespace dt::model
