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
