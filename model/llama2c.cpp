// model/llama2c.cpp — reading llama2.c `.bin` checkpoints (see llama2c.h).
#include "model/llama2c.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>

#include "model/safetensors.h"
#include "util/error.h"

namespace dt::model {
namespace {

constexpr int64_t kHeaderBytes = 7 * 4;
// Far above any llama2.c model (Llama 2 70B: dim 8192, 80 layers, 32000 vocab); a header beyond
// this is not a llama2.c file, and the bound keeps every size product below 2^63.
constexpr int64_t kMaxDim = 1 << 20;

std::string header_text(const Llama2cHeader& h) {
  return "dim " + std::to_string(h.dim) + ", hidden_dim " + std::to_string(h.hidden_dim) +
         ", n_layers " + std::to_string(h.n_layers) + ", n_heads " + std::to_string(h.n_heads) +
         ", n_kv_heads " + std::to_string(h.n_kv_heads) + ", vocab_size " +
         std::to_string(h.vocab_size) + ", seq_len " + std::to_string(h.seq_len);
}

// Empty when the header is sane, else what is wrong with it.
std::string header_problem(const Llama2cHeader& h) {
  for (int32_t v : {h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size,
                    h.seq_len})
    if (v <= 0 || v > kMaxDim) return "header values out of range";
  if (h.dim % h.n_heads != 0) return "dim is not a multiple of n_heads";
  if (h.n_kv_heads > h.n_heads || h.n_heads % h.n_kv_heads != 0)
    return "n_heads is not a multiple of n_kv_heads";
  if ((h.dim / h.n_heads) % 2 != 0) return "head size is odd (rotary needs pairs)";
  return {};
}

}  // namespace

int64_t llama2c_file_size(const Llama2cHeader& h) {
  const int64_t dim = h.dim, hidden = h.hidden_dim, layers = h.n_layers, vocab = h.vocab_size;
  const int64_t head = dim / h.n_heads, kv_dim = head * h.n_kv_heads;
  int64_t floats = vocab * dim                  // token_embedding
                   + layers * dim               // rms_att
                   + layers * dim * dim         // wq
                   + 2 * layers * dim * kv_dim  // wk, wv
                   + layers * dim * dim         // wo
                   + layers * dim               // rms_ffn
                   + 3 * layers * dim * hidden  // w1, w2, w3
                   + dim                        // rms_final
                   + int64_t{h.seq_len} * head;  // freq_cis_real + freq_cis_imag
  if (!h.shared_classifier) floats += vocab * dim;
  return kHeaderBytes + 4 * floats;  // < 2^63 given kMaxDim
}

at::Tensor permute_rotary_rows(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  return w.view({heads, rows / heads / 2, 2, cols}).transpose(1, 2).reshape({rows, cols});
}

namespace {

// Parses and checks the 28-byte header of a mapped llama2.c file, including the exact file size.
Llama2cHeader parse_header(const MappedFile& mapped, const std::string& path) {
  const MappedFile* file = &mapped;  // (the checks below read the mapping through `file`)
  auto bad = [&](const std::string& problem) { throw_usage_error(path + ": " + problem); };
  if (file->size() < static_cast<uint64_t>(kHeaderBytes))
    bad("file is truncated: " + std::to_string(file->size()) +
        " bytes, shorter than the 28-byte llama2.c header");
  int32_t raw[7];
  std::memcpy(raw, file->data(), sizeof(raw));
  Llama2cHeader h;
  h.dim = raw[0];
  h.hidden_dim = raw[1];
  h.n_layers = raw[2];
  h.n_heads = raw[3];
  h.n_kv_heads = raw[4];
  h.shared_classifier = raw[5] > 0;
  h.vocab_size = raw[5] == INT32_MIN ? 0 : std::abs(raw[5]);
  h.seq_len = raw[6];
  std::string problem = header_problem(h);
  if (!problem.empty())
    bad("not a llama2.c checkpoint: " + problem + " (" + header_text(h) + ")");
  const int64_t expected = llama2c_file_size(h);
  if (static_cast<int64_t>(file->size()) != expected)
    bad(std::string(static_cast<int64_t>(file->size()) < expected ? "file is truncated"
                                                                     : "size mismatch") +
        ": " + std::to_string(file->size()) + " bytes, but the header (" + header_text(h) +
        (h.shared_classifier ? ", shared classifier" : ", separate classifier") + ") implies " +
        std::to_string(expected));
  return h;
}

ModelConfig config_from_header(const Llama2cHeader& h, const std::string& path) {
  ModelConfig c;
  c.name = path;
  c.arch = Arch::Llama;
  c.vocab_size = h.vocab_size;
  c.d_model = h.dim;
  c.d_ff = h.hidden_dim;
  c.num_heads = h.n_heads;
  c.num_kv_heads = h.n_kv_heads;
  c.d_kv = h.dim / h.n_heads;
  c.num_layers = h.n_layers;
  c.gated_ffn = true;
  c.activation = "silu";
  c.tie_word_embeddings = h.shared_classifier;
  c.max_seq_len = h.seq_len;
  c.rope_theta = 10000.0;
  c.norm_eps = 1e-5;  // run.c's rmsnorm
  c.dtype = c10::ScalarType::Float;
  return c;
}

}  // namespace

ModelConfig read_llama2c_config(const std::string& path) {
  auto file = MappedFile::open(path);  // maps, reads only the header's page
  return config_from_header(parse_header(*file, path), path);
}

Llama2cModel read_llama2c(const std::string& path) {
  auto file = MappedFile::open(path);
  const Llama2cHeader h = parse_header(*file, path);
  Llama2cModel m;
  m.config = config_from_header(h, path);
  const ModelConfig& c = m.config;

  // Walk the file in its order; each tensor is a view of the mapping, stacked over layers.
  const int64_t L = h.n_layers, dim = h.dim, hidden = h.hidden_dim, head = c.d_kv;
  const int64_t kv_dim = head * h.n_kv_heads;
  uint64_t offset = kHeaderBytes;
  auto take = [&](std::vector<int64_t> shape) {
    at::Tensor t = file->view(offset, shape, c10::ScalarType::Float);
    offset += 4 * static_cast<uint64_t>(at::multiply_integers(shape));
    return t;
  };
  at::Tensor emb = take({h.vocab_size, dim});
  at::Tensor rms_att = take({L, dim});
  at::Tensor wq = take({L, dim, dim});
  at::Tensor wk = take({L, kv_dim, dim});
  at::Tensor wv = take({L, kv_dim, dim});
  at::Tensor wo = take({L, dim, dim});
  at::Tensor rms_ffn = take({L, dim});
  at::Tensor w1 = take({L, hidden, dim});
  at::Tensor w2 = take({L, dim, hidden});
  at::Tensor w3 = take({L, hidden, dim});
  at::Tensor rms_final = take({dim});
  offset += 4 * static_cast<uint64_t>(h.seq_len) * head;  // freq_cis: recomputed, never read
  at::Tensor wcls = h.shared_classifier ? at::Tensor() : take({h.vocab_size, dim});

  auto& out = m.tensors;
  out.emplace_back("model.embed_tokens.weight", emb);
  for (int64_t i = 0; i < L; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.emplace_back(p + "self_attn.q_proj.weight", permute_rotary_rows(wq[i], h.n_heads));
    out.emplace_back(p + "self_attn.k_proj.weight", permute_rotary_rows(wk[i], h.n_kv_heads));
    out.emplace_back(p + "self_attn.v_proj.weight", wv[i]);
    out.emplace_back(p + "self_attn.o_proj.weight", wo[i]);
    out.emplace_back(p + "mlp.gate_proj.weight", w1[i]);
    out.emplace_back(p + "mlp.up_proj.weight", w3[i]);
    out.emplace_back(p + "mlp.down_proj.weight", w2[i]);
    out.emplace_back(p + "input_layernorm.weight", rms_att[i]);
    out.emplace_back(p + "post_attention_layernorm.weight", rms_ffn[i]);
  }
  out.emplace_back("model.norm.weight", rms_final);
  if (wcls.defined()) out.emplace_back("lm_head.weight", wcls);
  return m;
}

}  // namespace dt::model
