#include "sparse/scatter.h"

#include <ATen/ATen.h>

#include "util/error.h"

namespace dt::sparse {

const char* scatter_impl_name(ScatterImpl impl) {
  switch (impl) {
    case ScatterImpl::IndexAdd: return "index_add";
    case ScatterImpl::IndexPut: return "index_put";
    case ScatterImpl::DenseDelta: return "dense_delta";
    case ScatterImpl::SparseCoo: return "sparse_coo";
  }
  return "?";
}

at::Tensor add_scattered(const at::Tensor& w, const at::Tensor& flat_idx, const at::Tensor& values,
                         ScatterImpl impl) {
  const at::Tensor v = values.scalar_type() == w.scalar_type() ? values : values.to(w.scalar_type());
  switch (impl) {
    case ScatterImpl::IndexAdd: return w.reshape(-1).index_add(0, flat_idx, v).view(w.sizes());
    case ScatterImpl::IndexPut:
      return w.reshape(-1).index_put({flat_idx}, v, /*accumulate=*/true).view(w.sizes());
    case ScatterImpl::DenseDelta: {
      at::Tensor delta = at::zeros({w.numel()}, w.options());
      return w + delta.index_put_({flat_idx}, v).view(w.sizes());
    }
    case ScatterImpl::SparseCoo: {
      const at::Tensor sp = at::sparse_coo_tensor(flat_idx.unsqueeze(0), v, {w.numel()});
      return (w.reshape(-1) + sp.to_dense()).view(w.sizes());
    }
  }
  DT_FAIL("add_scattered: unknown implementation");
}

}  // namespace dt::sparse
