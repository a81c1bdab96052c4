// peft/lst/lst.h — Ladder Side Tuning (Sung et al., 2022): the side network's shape, for tests and plan.
//
// The method itself lives in lst.cpp (registered as "lst"); this header exposes only the pure
// functions that say what the side network looks like, so tests can check counts in closed form.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace dt::peft {

struct LstOptions {
  int64_t r = 8;                    // d_model, d_ff and d_kv are divided by r; heads unchanged
  std::vector<int64_t> drop;        // backbone layers that get no side layer (t5-base paper: 0,4,8)
  double gate_temperature = 0.1;    // mu_i = sigmoid(alpha_i / T)
  std::string prune = "magnitude";  // magnitude | random (keep the side's random initialization)
};

// The side network's config: the backbone's with d_model, d_ff, d_kv divided by r and the dropped
// layers removed (from the encoder and the decoder of T5); sizes by floor division (LST's d // r).
// Throws dt::UsageError naming the sizes when r leaves a side dimension of 0, or when --lst.drop names
// a layer the backbone lacks, names one twice, or drops them all.
model::ModelConfig lst_side_config(const model::ModelConfig& config, const LstOptions& options);

// Backbone layer indices 0..layers-1 that keep a side layer, ascending.
std::vector<int64_t> lst_kept_layers(int64_t layers, const std::vector<int64_t>& drop);

}  // namespace dt::peft
