#include "model/device.h"

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/GradMode.h>

#include "util/error.h"

namespace dt::model {

void move_tensor(at::Tensor& t, const c10::Device& device, std::optional<c10::ScalarType> dtype) {
  if (!t.defined()) return;
  const bool cast = dtype && at::isFloatingType(t.scalar_type()) && t.scalar_type() != *dtype;
  if (t.device() == device && !cast) return;
  c10::NoGradGuard no_grad;
  // set_data keeps the tensor (and whoever holds it) while its storage moves; as Module::to does.
  t.set_data(cast ? t.to(device, *dtype) : t.to(device));
}

bool is_task_head(const std::string& name) {
  return name.rfind("score.", 0) == 0 || name.rfind("classifier.", 0) == 0;
}

void backbone_to(Backbone& backbone, const c10::Device& device, std::optional<c10::ScalarType> frozen_dtype,
                 bool only_frozen) {
  for (auto& [name, tensor] : backbone.named_parameters()) {
    const bool keep = is_task_head(name) || (only_frozen && tensor.requires_grad());
    move_tensor(tensor, device, keep ? std::nullopt : frozen_dtype);
  }
}

c10::Device backbone_device(const Backbone& backbone) {
  const auto params = backbone.named_parameters();
  return params.empty() ? c10::Device(c10::kCPU) : params.front().second.device();
}

Batch batch_to(const Batch& batch, const c10::Device& device) {
  if (device.is_cpu()) return batch;
  auto copy = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined() || t.device() == device) return t;
    // Pinned (page-locked) host memory lets the copy run asynchronously on the current stream.
    return t.pin_memory().to(device, /*non_blocking=*/true);
  };
  Batch out;
  out.input_ids = copy(batch.input_ids);
  out.attention_mask = copy(batch.attention_mask);
  out.labels = copy(batch.labels);
  out.decoder_input_ids = copy(batch.decoder_input_ids);
  out.token_type_ids = copy(batch.token_type_ids);
  out.head_offset = batch.head_offset;
  out.head_size = batch.head_size;
  out.task = batch.task;
  return out;
}

std::optional<c10::ScalarType> frozen_dtype(const std::string& train_dtype) {
  if (train_dtype == "fp32") return std::nullopt;
  if (train_dtype == "bf16") return c10::kBFloat16;
  throw_usage_error("--train.dtype must be fp32 or bf16, not '" + train_dtype + "'");
}

int64_t device_peak_bytes(const c10::Device& device) {
  if (device.is_cpu()) return 0;
  const auto stats = c10::getDeviceAllocator(device.type())->getDeviceStats(device.index());
  return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
}

void reset_device_peak(const c10::Device& device) {
  if (!device.is_cpu()) c10::getDeviceAllocator(device.type())->resetPeakStats(device.index());
}

}  // namespace dt::model
