// model/device.h — putting a backbone and its batches on a device (--device cpu|cuda).
//
// Design note: tensors move in place, as torch::nn::Module::to does it (Tensor::set_data): every
// holder of a parameter — the backbone's modules, a method's hooks, a weight cache — keeps the same
// tensor and sees it on the new device, so nothing has to be re-registered after the move. Batches are
// built on the host (tokenized rows gathered by collate) and copied through pinned memory with
// non_blocking copies, so the copy overlaps with the GPU's work on the previous step.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>
#include <vector>

#include "model/backbone.h"

namespace dt::model {

// Moves `t` to `device` (and, for floating tensors, to `dtype` when given) in place: same tensor,
// new storage. A tensor already there is left as it is.
void move_tensor(at::Tensor& t, const c10::Device& device, std::optional<c10::ScalarType> dtype = std::nullopt);

// The tensors of a task's classification head ("score.*", "classifier.*", those of peft::head_plan):
// always trained, in float32; never FISH-eligible; optional in a weights file.
bool is_task_head(const std::string& name);

// Moves every parameter of `backbone` to `device`. With `frozen_dtype`, the floating parameters
// other than the task head are also cast to it, as a bf16 weights file would give them
// (--train.dtype bf16: big T5 on a GPU). Before the methods attach nothing is frozen yet, and a
// method that trains backbone weights (`full`) makes its own float32 copy; after they attached (eval
// of a checkpoint), `only_frozen` leaves the trained tensors (requires_grad) as they are.
void backbone_to(Backbone& backbone, const c10::Device& device,
                 std::optional<c10::ScalarType> frozen_dtype = std::nullopt, bool only_frozen = false);

// The device of the backbone's first parameter.
c10::Device backbone_device(const Backbone& backbone);

// The batch on `device` (defined tensors only); on the CPU the batch itself. CUDA copies go through
// pinned host memory with non_blocking = true: ordered on the current stream, no host wait.
Batch batch_to(const Batch& batch, const c10::Device& device);

// --train.dtype as the dtype backbone_to casts the frozen weights to: fp32 leaves them as loaded
// (float32, or a bf16 file's bf16), bf16 casts them. A UsageError names anything else.
std::optional<c10::ScalarType> frozen_dtype(const std::string& train_dtype);

// Peak bytes the caching allocator held on `device` since the last reset (0 on the CPU), and the
// reset; for the per-step `device_peak_bytes` metric and bench/gpu.
int64_t device_peak_bytes(const c10::Device& device);
void reset_device_peak(const c10::Device& device);

}  // namespace dt::model
