// sparse/scatter.h — W + scatter(values): the effective weight of a tensor trained at fixed indices.
//
// Design note: FISH and DSEE keep W frozen and dense and train a short values vector v over fixed
// flat indices; the backbone needs W' = W + scatter(v) at each use (a weight hook). Autograd must
// give d/dv = grad_W'[idx] (a gather of k entries) and nothing for W. Several ATen routes compute
// the same W' (tests check they agree); bench/sparse_scatter (tests/sparse/bench_scatter.cpp) times
// them, forward + backward, and add_scattered uses the fastest (see the numbers there):
//   IndexAdd       W.view(-1).index_add(0, idx, v)         one copy of W, k adds; backward index_select
//   IndexPut       W.view(-1).index_put({idx}, v, true)     same work through the advanced-indexing path
//   DenseDelta     W + zeros.index_put_({idx}, v)           a dense delta, then an add (two passes)
//   SparseCoo      W + sparse_coo(idx, v).to_dense()        through torch.sparse (autograd needs to_dense)
// Measured (bench_sparse_scatter 0.005 10, one thread, this 2-core CPU host, best of 10, ms):
//   shape        k       index_add  index_put  dense_delta  sparse_coo
//   768x768      2949    0.076      0.086      0.226        0.578
//   768x3072     11796   0.930      1.470      2.119        8.201
//   4096x4096    83886   83.5       89.6       169.9        215.1
// index_add wins everywhere; at 4096² its time is mostly the fresh 64 MiB W' (page faults), which a
// buffer reused across steps could save (not done: autograd keeps W' alive until backward).
#pragma once

#include <ATen/core/Tensor.h>

namespace dt::sparse {

enum class ScatterImpl { IndexAdd, IndexPut, DenseDelta, SparseCoo };
const char* scatter_impl_name(ScatterImpl impl);

// W' = w + scatter(values) at the flat positions `flat_idx` (int64 [k], distinct), values [k] (cast
// to w's dtype). Differentiable in `values`.
at::Tensor add_scattered(const at::Tensor& w, const at::Tensor& flat_idx, const at::Tensor& values,
                         ScatterImpl impl = ScatterImpl::IndexAdd);

}  // namespace dt::sparse
