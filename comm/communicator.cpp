// comm/communicator.cpp — what every backend shares: names, counters and argument checks.
#include "comm/communicator.h"

#include <c10/core/ScalarType.h>

#include "util/error.h"

namespace dt::comm {

const char* collective_name(Collective c) {
  switch (c) {
    case Collective::AllReduce: return "all_reduce";
    case Collective::Broadcast: return "broadcast";
    case Collective::AllGather: return "all_gather";
    case Collective::AllGatherV: return "all_gather_v";
    case Collective::ReduceScatter: return "reduce_scatter";
    case Collective::Barrier: return "barrier";
  }
  return "unknown";
}

CollectiveCounters Communicator::counters(Collective c) const {
  const auto& k = counters_[static_cast<int>(c)];
  return {k.calls.load(), k.bytes.load()};
}

CollectiveCounters Communicator::total_counters() const {
  CollectiveCounters total;
  for (const auto& k : counters_) {
    total.calls += k.calls.load();
    total.bytes += k.bytes.load();
  }
  return total;
}

void Communicator::reset_counters() {
  for (auto& k : counters_) {
    k.calls = 0;
    k.bytes = 0;
  }
}

WorkPtr Communicator::counted(Collective c, uint64_t bytes, WorkPtr work) {
  auto& k = counters_[static_cast<int>(c)];
  k.calls.fetch_add(1);
  k.bytes.fetch_add(bytes);
  work->set_accounting(bytes, 1);
  return work;
}

void check_tensor(const at::Tensor& t, const char* backend, const char* what) {
  DT_CHECK(t.defined(), std::string("backend ") + backend + ": " + what + " is an undefined tensor");
  switch (t.scalar_type()) {
    case at::kFloat:
    case at::kDouble:
    case at::kBFloat16:
    case at::kHalf:
    case at::kInt:
    case at::kLong:
      break;
    default:
      DT_FAIL(std::string("backend ") + backend + " does not support dtype " +
                  c10::toString(t.scalar_type()) + " (" + what + ")",
              "use float32, float64, bfloat16, float16, int32 or int64");
  }
  // A strided view would make the backend read the wrong elements, silently; refuse it instead.
  DT_CHECK(t.is_contiguous(),
           std::string("backend ") + backend + " does not support non-contiguous tensors (" + what + ")",
           "call .contiguous() first and copy the result back");
}

size_t element_size_bytes(const at::Tensor& t) { return static_cast<size_t>(t.element_size()); }

namespace {
void check_pair(const at::Tensor& input, const at::Tensor& output, const char* op) {
  DT_CHECK(input.scalar_type() == output.scalar_type(),
           std::string(op) + ": input is " + c10::toString(input.scalar_type()) + " but output is " +
               c10::toString(output.scalar_type()));
  DT_CHECK(input.numel() == 0 || output.numel() == 0 || input.data_ptr() != output.data_ptr(),
           std::string(op) + ": input and output must not share memory");
}
std::string n(int64_t v) { return std::to_string(v); }
}  // namespace

void check_broadcast_root(int root, int size) {
  DT_CHECK(root >= 0 && root < size,
           "broadcast root " + std::to_string(root) + " is not a rank of " + std::to_string(size));
}

void check_all_gather_args(const at::Tensor& input, const at::Tensor& output, int size) {
  check_pair(input, output, "all_gather");
  DT_CHECK(output.numel() == input.numel() * size,
           "all_gather output has " + n(output.numel()) + " elements, expected size() × input = " +
               n(size) + " × " + n(input.numel()));
}

void check_all_gather_v_args(const at::Tensor& input, const at::Tensor& output,
                             const std::vector<int64_t>& counts, int rank, int size) {
  check_pair(input, output, "all_gather_v");
  DT_CHECK(static_cast<int>(counts.size()) == size,
           "all_gather_v got " + n(counts.size()) + " counts for " + n(size) + " ranks");
  DT_CHECK(counts[rank] == input.numel(), "all_gather_v: counts[" + n(rank) + "] = " + n(counts[rank]) +
                                              " but this rank's input has " + n(input.numel()) +
                                              " elements");
  int64_t total = 0;
  for (int64_t c : counts) {
    DT_CHECK(c >= 0, "all_gather_v: negative count " + n(c));
    total += c;
  }
  DT_CHECK(output.numel() == total,
           "all_gather_v output has " + n(output.numel()) + " elements, counts sum to " + n(total));
}

void check_reduce_scatter_args(const at::Tensor& input, const at::Tensor& output, int size) {
  check_pair(input, output, "reduce_scatter");
  DT_CHECK(input.numel() == output.numel() * size,
           "reduce_scatter input has " + n(input.numel()) + " elements, expected size() × output = " +
               n(size) + " × " + n(output.numel()));
}

std::string describe_gpu_sharing(const std::vector<std::string>& gpu_ids) {
  std::string without, shared;
  for (size_t r = 0; r < gpu_ids.size(); ++r) {
    if (gpu_ids[r].empty()) {
      without += (without.empty() ? "" : ",") + std::to_string(r);
      continue;
    }
    for (size_t q = 0; q < r; ++q) {
      if (gpu_ids[q] == gpu_ids[r]) {
        shared += (shared.empty() ? "" : "; ") + std::string("ranks ") + std::to_string(q) + " and " +
                  std::to_string(r) + " share GPU " + gpu_ids[r];
        break;
      }
    }
  }
  if (!without.empty()) return "rank(s) " + without + " have no GPU";
  if (!shared.empty()) {
    return shared + ", and NCCL needs a GPU of its own for every rank (it refuses two ranks on one GPU: "
                    "\"Duplicate GPU detected\")";
  }
  return {};
}

}  // namespace dt::comm
