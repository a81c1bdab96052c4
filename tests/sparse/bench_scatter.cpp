// bench_sparse_scatter — forward + backward time of W' = W + scatter(values) per variant
// (sparse/scatter.h), at FISH's density, for the weight shapes of t5-base, Llama-7B-ish and an FFN.
// Not a test: prints a table; `add_scattered` defaults to the fastest measured.
//   build-*/bench/bench_sparse_scatter [density=0.005] [reps=20]
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "sparse/scatter.h"

int main(int argc, char** argv) {
  const double density = argc > 1 ? std::atof(argv[1]) : 0.005;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  at::set_num_threads(1);
  std::printf("# W + scatter(values), forward + backward, density %.4f, %d reps, 1 thread\n", density, reps);
  std::printf("# %12s %10s %12s %12s\n", "shape", "k", "variant", "time_ms");
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{768, 768}, {768, 3072}, {4096, 4096}};
  for (auto [out, in] : shapes) {
    const at::Tensor w = at::randn({out, in});
    const int64_t k = static_cast<int64_t>(density * out * in);
    const at::Tensor idx = std::get<0>(at::randperm(out * in).narrow(0, 0, k).sort());
    const at::Tensor g = at::randn({out, in});
    for (auto impl : {dt::sparse::ScatterImpl::IndexAdd, dt::sparse::ScatterImpl::IndexPut,
                      dt::sparse::ScatterImpl::DenseDelta, dt::sparse::ScatterImpl::SparseCoo}) {
      at::Tensor v = at::randn({k}).requires_grad_(true);
      double best = 1e30;
      for (int r = 0; r < reps + 2; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        at::Tensor wp = dt::sparse::add_scattered(w, idx, v, impl);
        // The gradient a linear layer hands back for W' (precomputed g), then d/dv.
        wp.backward(g);
        v.mutable_grad().reset();
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (r >= 2) best = std::min(best, ms);
      }
      std::printf("  %5lldx%-6lld %10lld %12s %12.3f\n", static_cast<long long>(out), static_cast<long long>(in),
                  static_cast<long long>(k), dt::sparse::scatter_impl_name(impl), best);
    }
  }
  return 0;
}
