// model/llama2c.h — Karpathy's llama2.c checkpoint format (`.bin`, e.g. stories260K.bin).
//
// Design note: the file is 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len; a negative vocab_size means the classifier is stored separately) followed by float32
// tensors in a fixed order: token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
// rms_final, freq_cis (2 x seq_len x head_size/2, unused), then wcls when unshared. There is no
// magic number, so the only defence against a wrong file is that the header is sane and the size
// matches to the byte; both are checked and the problem named.
//
// Inside deltatune every Llama speaks Hugging Face: HF names (model.layers.{i}.self_attn.q_proj
// .weight, ...) and HF's rotary convention (rotate_half over the two halves of a head). llama2.c's
// run.c rotates interleaved pairs (Meta's layout), so wq and wk are permuted at load time with the
// same permutation HF's convert_llama_weights_to_hf.py applies; all other tensors stay zero-copy
// views of the mapped file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"

namespace dt::model {

struct Llama2cHeader {
  int32_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0,
          seq_len = 0;
  bool shared_classifier = true;
};

struct Llama2cModel {
  ModelConfig config;
  // HF names in HF order; lm_head.weight only when the classifier is not shared.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
};

// Throws dt::UsageError "<path>: <problem>" (truncated, nonsensical header, size mismatch).
Llama2cModel read_llama2c(const std::string& path);
// Only the config, from the header (the file size is checked; no weights are read).
ModelConfig read_llama2c_config(const std::string& path);

// The exact file size a header implies (header included), or -1 when it overflows.
int64_t llama2c_file_size(const Llama2cHeader& h);

// Meta (interleaved pairs) -> HF (rotate_half) row order of a [heads * head_dim, in] projection:
// w.view(heads, head_dim / 2, 2, in).transpose(1, 2).reshape(heads * head_dim, in).
at::Tensor permute_rotary_rows(const at::Tensor& w, int64_t heads);

}  // namespace dt::model
