// model/module_tree.h — torch::nn module trees whose named_parameters() are the HF names.
//
// Included only by backbone .cpp files that already include <torch/torch.h>.
#pragma once

#include <torch/nn/module.h>

#include <string>

namespace dt::model {

// Registers `value` under a dotted HF name ("encoder.block.0.layer.0.SelfAttention.q.weight"),
// creating the intermediate modules, so the tree's named_parameters() yields the HF names.
void register_dotted(torch::nn::Module& root, const std::string& name, const at::Tensor& value);

}  // namespace dt::model
