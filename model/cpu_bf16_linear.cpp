// model/cpu_bf16_linear.cpp — see cpu_bf16_linear.h for why.
#include "model/cpu_bf16_linear.h"

#include <ATen/cpu/Utils.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "util/error.h"

namespace dt::model {

namespace {

// W is upcast about 1 MiB at a time (262,144 floats: 256 rows of 1024, 16 of 16384), a block that stays
// in L2, into buffers each thread keeps for good: a fresh tensor per block (16 MiB for T5-3B's 16384-wide
// rows) made glibc's heap keep ~0.6 GiB more per T5-3B rank at its peak than ATen's own bf16 linear.
constexpr int64_t kBlockFloats = int64_t{1} << 18;

int64_t block_rows(const at::Tensor& w) { return std::max<int64_t>(1, kBlockFloats / w.size(1)); }

// A float32 [r, cols] view of this thread's buffer `which` (0: W's rows, 1: gᵀ·x's rows), grown if ever needed.
at::Tensor scratch(int which, int64_t r, int64_t cols) {
  thread_local at::Tensor buffers[2];
  at::Tensor& b = buffers[which];
  if (!b.defined() || b.numel() < r * cols) b = at::empty({std::max(kBlockFloats, r * cols)}, at::kFloat);
  return b.narrow(0, 0, r * cols).view({r, cols});
}

// W's rows [i, i + r) as float32, in this thread's buffer 0.
at::Tensor upcast(const at::Tensor& w, int64_t i, int64_t r) {
  at::Tensor block = scratch(0, r, w.size(1));
  block.copy_(w.narrow(0, i, r));
  return block;
}

// out [out_features, N] float32 = W·xᵀ, block by block of W's rows (xf [N, in] float32).
at::Tensor blocked_forward(const at::Tensor& xf, const at::Tensor& w) {
  const int64_t rows = w.size(0);
  at::Tensor out = at::empty({rows, xf.size(0)}, xf.options());
  const at::Tensor xt = xf.t();
  const int64_t step = block_rows(w);
  for (int64_t i = 0; i < rows; i += step) {
    const int64_t r = std::min(step, rows - i);
    at::Tensor block = out.narrow(0, i, r);
    at::mm_out(block, upcast(w, i, r), xt);
  }
  return out;
}

class BlockedBf16Linear : public torch::autograd::Function<BlockedBf16Linear> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({x, w});  // x as given and W in bf16: nothing float32 outlives the call
    const at::Tensor x2 = x.reshape({-1, x.size(-1)}).to(at::kFloat);
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    return blocked_forward(x2, w).t().to(at::kBFloat16).reshape(shape);
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const int64_t rows = w.size(0);
    // g [N, out] as gᵀ [out, N], contiguous: a block of W's rows meets a block of gᵀ's rows.
    const at::Tensor gt = grads[0].reshape({-1, rows}).to(at::kFloat).t().contiguous();
    at::Tensor grad_x, grad_w;
    if (ctx->needs_input_grad(0)) {
      at::Tensor acc = at::zeros({gt.size(1), w.size(1)}, gt.options());  // [N, in] = Σ_blocks gᵀ_blockᵀ·W_block
      const int64_t step = block_rows(w);
      for (int64_t i = 0; i < rows; i += step) {
        const int64_t r = std::min(step, rows - i);
        acc.addmm_(gt.narrow(0, i, r).t(), upcast(w, i, r));
      }
      grad_x = acc.to(x.scalar_type()).reshape(x.sizes());
    }
    if (ctx->needs_input_grad(1)) {
      const at::Tensor xf = x.reshape({-1, x.size(-1)}).to(at::kFloat);
      grad_w = at::empty(w.sizes(), w.options());  // [out, in] bf16, one block's float32 product at a time
      const int64_t step = block_rows(w);
      for (int64_t i = 0; i < rows; i += step) {
        const int64_t r = std::min(step, rows - i);
        at::Tensor block = scratch(1, r, w.size(1));
        at::mm_out(block, gt.narrow(0, i, r), xf);
        grad_w.narrow(0, i, r).copy_(block);
      }
    }
    return {grad_x, grad_w};
  }
};

}  // namespace

bool cpu_bf16_linear_blocked() {
  static const bool blocked = [] {
    if (const char* v = std::getenv("DELTATUNE_CPU_BF16_LINEAR"); v && *v) {
      const std::string s = v;
      if (s == "blocked") return true;
      if (s == "native") return false;
      throw_usage_error("DELTATUNE_CPU_BF16_LINEAR='" + s + "': expected native | blocked (or unset: by the CPU)");
    }
    const auto caps = at::cpu::get_cpu_capabilities();
    auto has = [&](const char* key) {
      const auto it = caps.find(key);
      return it != caps.end() && it->second.isBool() && it->second.toBool();
    };
    return !(has("avx512_bf16") || has("amx_bf16"));
  }();
  return blocked;
}

at::Tensor blocked_bf16_linear(const at::Tensor& x, const at::Tensor& w) {
  DT_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2 && w.device().is_cpu(),
           "blocked_bf16_linear: W must be a 2-D bf16 tensor on the CPU");
  return BlockedBf16Linear::apply(x, w);
}

}  // namespace dt::model
