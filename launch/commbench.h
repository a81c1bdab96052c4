// launch/commbench.h — the arithmetic of `deltatune commbench`, separate so that tests can check it.
//
// Design note (after nccl-tests): one small table entry per collective says how a byte size maps to
// element counts, which reduction it performs and its bus-bandwidth factor; the benchmark loop is the
// same for all of them. Bandwidths are derived in bench/COMMBENCH.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dt::launch::commbench {

enum class Op { AllReduce, AllGather, Broadcast, ReduceScatter };

// "allreduce" | "allgather" | "broadcast" | "reducescatter"; throws dt::UsageError otherwise.
Op parse_op(const std::string& name);
const char* op_name(Op op);
// "sum" for the reducing collectives, "none" otherwise (nccl-tests' redop column).
const char* redop_name(Op op);

// "8", "64K", "64M", "1G" (powers of 1024; case-insensitive); throws dt::UsageError naming `flag`.
int64_t parse_bytes(const std::string& text, const std::string& flag);

// busbw / algbw: 2(n-1)/n for all-reduce, (n-1)/n for all-gather and reduce-scatter, 1 for broadcast.
double bus_factor(Op op, int ranks);

// The benchmarked sizes in bytes: from `min_bytes`, times `factor`, while not above `max_bytes`;
// each rounded down to a multiple of the element size (× ranks for all-gather and reduce-scatter,
// whose size is the whole gathered / scattered buffer).
std::vector<int64_t> benchmark_sizes(int64_t min_bytes, int64_t max_bytes, double factor, Op op,
                                     int element_size, int ranks);

}  // namespace dt::launch::commbench
