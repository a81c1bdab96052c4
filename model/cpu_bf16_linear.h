// model/cpu_bf16_linear.h — x·Wᵀ for bf16 weights on CPUs without bf16 arithmetic.
//
// Why: on a core with AVX2 but neither AVX512-BF16 nor AMX, ATen's bf16 matmuls take a slow reference
// path. Measured on this project's 2-core AMD EPYC (AVX2 only), torch 2.11, 1 thread, x [16 x 1024],
// W [16384 x 1024] bf16: the forward x·Wᵀ 52 ms, the backward's g·W 908 ms, while the same products with W
// upcast to float32 256 rows at a time take 13 ms. A T5-3B step (batch 1 x 16 tokens) took 103 s at
// 2 ranks, ten times the goal. So there the linear upcasts W in row blocks (each block's float32 copy
// stays in cache: never a whole float32 copy of W, 11.4 GB for T5-3B, which autograd would also keep),
// accumulates in float32 as a bf16 GEMM does, and rounds the result to bf16. Its backward does the same
// for g·W and, only when W itself needs a gradient (a method's W + delta), for gᵀ·x.
#pragma once

#include <ATen/core/Tensor.h>

namespace dt::model {

// Whether linear() of bf16 tensors on the CPU goes through the blocked float32 path: the CPU has no
// AVX512-BF16 or AMX-BF16 (ATen's cpuinfo), unless DELTATUNE_CPU_BF16_LINEAR=native | blocked says
// otherwise (both sides of the benchmark in one run).
bool cpu_bf16_linear_blocked();

// x [..., in] (any floating dtype; computed in float32) times w [out, in] bf16 on the CPU, transposed:
// [..., out] bf16, differentiable in x and w. Equals torch::linear(x, w) up to the accumulation order.
at::Tensor blocked_bf16_linear(const at::Tensor& x, const at::Tensor& w);

}  // namespace dt::model
