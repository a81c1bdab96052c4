#include "dist/bucket.h"

#include <fmt/format.h>

#include <map>

#include "util/error.h"

namespace dt::dist {

std::vector<BucketSpec> assign_buckets(const std::vector<TensorSpec>& tensors,
                                       size_t first_bucket_cap_bytes, size_t bucket_cap_bytes) {
  DT_CHECK(first_bucket_cap_bytes > 0 && bucket_cap_bytes > 0,
           fmt::format("bucket caps must be positive (got first {} B, cap {} B)",
                       first_bucket_cap_bytes, bucket_cap_bytes));
  struct Open {
    BucketSpec spec;
    size_t bytes = 0;
    size_t element_size = 0;
    bool first = true;  // the next bucket closed for this dtype is its first
  };
  std::map<c10::ScalarType, Open> open;      // one open bucket per dtype
  std::vector<c10::ScalarType> dtype_order;  // order of first appearance, for the leftovers
  std::vector<BucketSpec> out;

  auto close = [&](Open& o) {
    if (o.spec.tensors.empty()) return;
    out.push_back(std::move(o.spec));
    o.spec = BucketSpec{};
    o.spec.dtype = out.back().dtype;
    o.bytes = 0;
    o.first = false;
  };

  for (size_t k = tensors.size(); k-- > 0;) {
    const TensorSpec& t = tensors[k];
    DT_CHECK(t.numel >= 0 && t.element_size > 0,
             fmt::format("tensor '{}' has numel {} and element size {}", t.name, t.numel,
                         t.element_size));
    if (t.numel == 0) continue;
    auto [it, inserted] = open.try_emplace(t.dtype);
    Open& o = it->second;
    if (inserted) {
      dtype_order.push_back(t.dtype);
      o.spec.dtype = t.dtype;
      o.element_size = t.element_size;
    }
    DT_CHECK(o.element_size == t.element_size,
             fmt::format("tensor '{}' has element size {} but an earlier tensor of the same dtype "
                         "has {}",
                         t.name, t.element_size, o.element_size));
    const size_t bytes = static_cast<size_t>(t.numel) * t.element_size;
    const size_t cap = o.first ? first_bucket_cap_bytes : bucket_cap_bytes;
    if (bytes > cap) close(o);  // a huge tensor travels alone
    o.spec.tensors.push_back(k);
    o.spec.offsets.push_back(o.spec.numel);
    o.spec.numel += t.numel;
    o.bytes += bytes;
    if (o.bytes >= cap) close(o);
  }
  for (c10::ScalarType d : dtype_order) close(open[d]);
  return out;
}

std::string describe_buckets(const std::vector<BucketSpec>& buckets,
                             const std::vector<TensorSpec>& tensors) {
  size_t total = 0;
  std::string parts;
  for (size_t b = 0; b < buckets.size(); ++b) {
    const BucketSpec& s = buckets[b];
    size_t es = s.tensors.empty() ? 0 : tensors[s.tensors.front()].element_size;
    size_t bytes = s.bytes(es);
    total += bytes;
    parts += fmt::format("{}[{}] {} tensors {:.2f} MiB {}", b ? ", " : "", b, s.tensors.size(),
                         bytes / 1048576.0, c10::toString(s.dtype));
  }
  return fmt::format("{} buckets, {:.2f} MiB: {}", buckets.size(), total / 1048576.0, parts);
}

}  // namespace dt::dist
