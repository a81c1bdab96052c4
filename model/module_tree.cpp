#include "model/module_tree.h"

namespace dt::model {

void register_dotted(torch::nn::Module& root, const std::string& name, const at::Tensor& value) {
  torch::nn::Module* node = &root;
  size_t start = 0;
  for (size_t dot; (dot = name.find('.', start)) != std::string::npos; start = dot + 1) {
    const std::string part = name.substr(start, dot - start);
    auto children = node->named_children();
    if (auto* child = children.find(part)) {
      node = child->get();
    } else {
      node = node->register_module(part, std::make_shared<torch::nn::Module>()).get();
    }
  }
  node->register_parameter(name.substr(start), value);
}

}  // namespace dt::model
