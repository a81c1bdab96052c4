// dist/agreement.h — do all ranks start from the same thing?
//
// Design note: data parallelism is only correct if every rank runs the same config on the same
// backbone with the same trainable set (and mask). A silent difference (one node with a stale
// checkpoint, a different INI) trains garbage without any error, so training starts with an
// agreement: each rank hashes a few canonical strings, the hashes are all-gathered, and if any rank
// differs from rank 0, EVERY rank throws the same error naming the item and the ranks — nobody is
// left waiting in a collective. Only 8 bytes per item travel; frozen weights are compared by the
// hash of their bytes (hash_tensors), never broadcast.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "comm/communicator.h"

namespace dt::dist {

// FNV-1a 64 of a string (stable across platforms and runs).
uint64_t hash_string(std::string_view text);

// A 64-bit hash of the tensors' dtypes, shapes and raw bytes (8-byte words, multiply-rotate mix),
// in order. Tensors must be on the CPU; non-contiguous ones are hashed as their contiguous copy.
uint64_t hash_tensors(const std::vector<at::Tensor>& tensors);

// 16 hex digits, for logs and item strings.
std::string hash_hex(uint64_t h);

// `items`: (what, canonical string) in the same order on every rank, e.g. ("config", resolved
// INI), ("backbone", identity), ("trainable", names + shapes), ("frozen", hash_hex(hash_tensors)).
// Collective: every rank must call it. Throws dt::Error on every rank if any item differs:
// "start-up mismatch in 'config': rank 1 differs from rank 0".
void agree_or_throw(comm::Communicator& comm,
                    const std::vector<std::pair<std::string, std::string>>& items);

}  // namespace dt::dist
