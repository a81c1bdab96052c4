// launch/peft_format.h — HF PEFT's adapter directory (adapter_config.json + adapter_model.safetensors)
// for the methods PEFT shares with us (lora, ia3, prompt): `export --format peft` writes one,
// `train --init-from DIR` reads one (an adapter PEFT trained, or one we exported).
//
// Design note: one table, built from our trainables, says where each of our tensors lives in PEFT's
// file (its key and PEFT's shape), so the two directions cannot drift apart. Our trainable names are
// already HF module names; PEFT puts them under "base_model.model." (LoRA, IA3: a tuner wraps the
// transformers model) or "base_model." (prompt learning), and HF's BertFor* keep the encoder under
// "bert.". (IA)^3's vectors go where PEFT keeps them: k/v as [out, 1] on the projection, the FFN's as
// [1, d_ff] on the FFN's output linear (PEFT's feedforward_modules: it scales that linear's input,
// which is our intermediate activation). The task head is PEFT's modules_to_save.
#pragma once

#include <boost/program_options/variables_map.hpp>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "model/backbone.h"
#include "peft/method.h"

namespace dt::launch {

struct PeftTensor {
  std::string ours;            // our trainable's name
  std::string key;             // its key in adapter_model.safetensors
  std::vector<int64_t> shape;  // PEFT's shape (same values; k/v/FFN (IA)^3 vectors gain a unit dimension)
};

struct PeftLayout {
  std::string method;          // lora | ia3 | prompt
  nlohmann::json config;       // adapter_config.json
  std::vector<PeftTensor> tensors;
};

// The PEFT layout of `trainables` (the model's method set applied with `options`). dt::UsageError when
// the method set is not exactly one of lora, ia3, prompt.
PeftLayout peft_layout(const peft::MethodSet& methods, const model::Backbone& backbone,
                       const std::vector<peft::Trainable>& trainables,
                       const boost::program_options::variables_map& options, const std::string& base_model);

// Copies the adapter in `dir` into `trainables` (laid out as `layout`): its config must be the same
// kind of adapter with the same hyper-parameters (peft_type, r, lora_alpha, prompt length), and its
// tensors exactly the layout's keys and shapes. Anything else is a dt::UsageError naming the
// difference, before any value is copied. Returns the number of values read.
int64_t load_peft_adapter(const std::string& dir, const PeftLayout& layout,
                          const std::vector<peft::Trainable>& trainables);

}  // namespace dt::launch
