// tests/sparse/test_sparse_util.h — tiny models, samples and method sets shared by the sparse tests.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "model/backbone.h"
#include "peft/method.h"
#include "sparse/fisher.h"

namespace dt::testing {

// tiny-llama (or another tiny config) with a 2-label head, seeded so two calls give equal weights.
std::unique_ptr<model::Backbone> tiny_backbone(const std::string& name = "tiny-llama");
// Sample i: 6 random token ids and a label, a pure function of i (the same on every rank).
model::Batch sample_batch(const model::ModelConfig& config, const std::vector<int64_t>& ids);
sparse::SampleFn sample_fn(const model::ModelConfig& config);
// A MethodSet parsed from "--method" + args, with fish and dsee registered.
peft::MethodSet method_set(const std::string& method, const std::vector<std::string>& args);

}  // namespace dt::testing
