// --device cuda, method by method: the same tiny model and method, set up on the host as `train`
// does (same seed, same initial values), one step on the CPU and one on the GPU — forward, backward,
// clipping, AdamW — must give the same loss and the same gradients within float tolerance, with
// every trainable tensor, every frozen weight and the gradients on the GPU. A method that created a
// tensor on the host and used it in its hooks fails here with torch's device-mismatch error.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "dist/optim.h"
#include "model/device.h"
#include "model/load.h"
#include "model/t5.h"
#include "peft/method.h"
#include "sparse/methods.h"
#include "tests/peft/test_adapters_util.h"

namespace dt {
namespace {

struct DeviceCase {
  std::string model;
  std::vector<std::string> args;  // --method and its options
};

std::vector<DeviceCase> cases() {
  std::vector<DeviceCase> out;
  for (const char* model : {"tiny-llama", "tiny-t5", "tiny-bert"}) {
    out.push_back({model, {"--method", "full"}});
    out.push_back({model, {"--method", "bitfit"}});
    out.push_back({model, {"--method", "lora", "--lora.targets", "q,k,v,o,wi,wo"}});
    out.push_back({model, {"--method", "houlsby", "--houlsby.bottleneck", "8"}});
    out.push_back({model, {"--method", "pfeiffer", "--pfeiffer.bottleneck", "8"}});
    out.push_back({model, {"--method", "parallel_adapter", "--parallel_adapter.bottleneck", "8"}});
    out.push_back({model, {"--method", "prefix", "--prefix.length", "4", "--prefix.hidden", "16"}});
    out.push_back({model, {"--method", "prompt", "--prompt.length", "4"}});
    out.push_back({model, {"--method", "ia3"}});
    out.push_back({model, {"--method", "compacter", "--compacter.bottleneck", "8"}});
    out.push_back({model, {"--method", "mam", "--mam.prefix-length", "4", "--mam.prefix-hidden", "16",
                           "--mam.bottleneck", "8"}});
    out.push_back({model, {"--method", "fish", "--fish.select", "magnitude", "--fish.keep", "0.01"}});
    out.push_back({model, {"--method", "dsee", "--dsee.rank", "2", "--dsee.sparse", "16"}});
  }
  for (const char* model : {"tiny-llama", "tiny-t5"}) out.push_back({model, {"--method", "lst", "--lst.r", "2"}});
  return out;
}

// The GPU, or what DELTATUNE_TEST_DEVICE names (cpu: the harness checked where there is no GPU).
std::optional<c10::Device> target_device() {
  const char* forced = std::getenv("DELTATUNE_TEST_DEVICE");
  if (forced && std::string(forced) == "cpu") return c10::Device(c10::kCPU);
  if (!at::hasCUDA()) return std::nullopt;
  return c10::Device(c10::kCUDA, 0);
}

struct StepResult {
  double loss = 0;
  std::vector<at::Tensor> grads;  // the trainables' gradients, on the host
};

// LST trains its side network with dropout on whenever gradients are (a T5 side network has dropout):
// the CPU and the GPU draw other masks, so there only the forward without gradients is compared.
bool dropout_while_training(const DeviceCase& c) { return c.args[1] == "lst" && c.model != "tiny-llama"; }

StepResult one_step(const DeviceCase& c, const c10::Device& device) {
  auto backbone = testing::adapters::tiny(c.model);
  model::backbone_to(*backbone, device);
  const peft::MethodSet set = testing::adapters::method_set(c.args);
  at::manual_seed(5);  // the methods' initial values come from the host generator
  const std::vector<peft::Trainable> trainables = set.apply(*backbone);
  set.to(device, trainables);
  for (const auto& [name, t] : backbone->named_parameters()) {
    EXPECT_EQ(t.device(), device) << c.model << " " << c.args[1] << ": backbone tensor " << name;
  }
  dist::NamedTensors named;
  for (const auto& t : trainables) {
    EXPECT_EQ(t.tensor.device(), device) << c.model << " " << c.args[1] << ": trainable " << t.name;
    named.emplace_back(t.name, t.tensor);
  }
  auto optimizer = dist::make_optimizer(named, {});
  backbone->set_training(false);  // no dropout: the two devices draw different random numbers
  const model::Batch batch = model::batch_to(testing::adapters::batch_for(backbone->config()), device);
  StepResult r;
  if (dropout_while_training(c)) {
    c10::NoGradGuard no_grad;
    r.loss = set.forward(*backbone, batch).loss.item<double>();
  }
  at::Tensor loss = set.forward(*backbone, batch).loss;
  if (!dropout_while_training(c)) r.loss = loss.item<double>();
  loss.backward();
  for (const auto& [name, t] : named) {
    if (t.grad().defined()) {
      EXPECT_EQ(t.grad().device(), device) << "gradient of " << name;
    }
    // A copy: on the CPU .to(kCPU) would alias the gradient that clipping then scales in place.
    r.grads.push_back(t.grad().defined() ? t.grad().to(at::kCPU).clone() : at::zeros(t.sizes()));
  }
  // The step runs where the tensors are (clipping's norm, AdamW's moments); its result is compared
  // through the gradients above: AdamW's first step divides a gradient by its own magnitude, so a
  // gradient that is zero up to rounding (a key bias under softmax) moves by +-lr on either device.
  dist::clip_grad_norm(named, 1.0);
  optimizer->step(1e-2);
  for (const auto& [name, t] : named) {
    EXPECT_TRUE(at::isfinite(t.detach()).all().item<bool>()) << name << " after the step";
  }
  return r;
}

TEST(Device, EveryMethodTrainsOnTheDeviceAsOnTheCpu) {
  const auto device = target_device();
  if (!device) GTEST_SKIP() << "no GPU visible to torch (set DELTATUNE_TEST_DEVICE=cpu to run the harness on the CPU)";
  sparse::register_methods();
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.model + " " + c.args[1]);
    const StepResult cpu = one_step(c, c10::Device(c10::kCPU));
    const StepResult dev = one_step(c, *device);
    EXPECT_NEAR(cpu.loss, dev.loss, 1e-4 * std::max(1.0, std::abs(cpu.loss)));
    ASSERT_EQ(cpu.grads.size(), dev.grads.size());
    if (dropout_while_training(c)) continue;
    for (size_t i = 0; i < cpu.grads.size(); ++i) {
      // Relative to the largest gradient of the tensor: float32 sums in another order.
      const double scale = std::max(1e-3, cpu.grads[i].abs().max().item<double>());
      const double err = (cpu.grads[i] - dev.grads[i]).abs().max().item<double>() / scale;
      EXPECT_LT(err, 1e-3) << "gradient of trainable " << i << " differs by " << err << " of its largest entry";
    }
  }
}

// --train.dtype bf16: the frozen T5 weights cast on the device, trainables stay float32, and the
// loss is within bf16 rounding of the float32 one.
TEST(Device, Bf16T5StepIsCloseToFloat32) {
  const auto device = target_device();
  if (!device) GTEST_SKIP() << "no GPU visible to torch";
  const DeviceCase c{"tiny-t5", {"--method", "lora", "--lora.targets", "q,v"}};
  auto backbone = testing::adapters::tiny(c.model);
  model::backbone_to(*backbone, *device, model::frozen_dtype("bf16"));
  int64_t cast = 0;
  for (const auto& [name, t] : backbone->named_parameters()) {
    EXPECT_EQ(t.scalar_type(), model::is_task_head(name) ? at::kFloat : at::kBFloat16) << name;
    cast += t.scalar_type() == at::kBFloat16;
  }
  EXPECT_GT(cast, 10);
  const peft::MethodSet set = testing::adapters::method_set(c.args);
  at::manual_seed(5);
  const auto trainables = set.apply(*backbone);
  set.to(*device, trainables);
  for (const auto& t : trainables) EXPECT_EQ(t.tensor.scalar_type(), at::kFloat) << t.name;
  backbone->set_training(false);
  const double bf16 =
      set.forward(*backbone, model::batch_to(testing::adapters::batch_for(backbone->config()), *device))
          .loss.item<double>();
  EXPECT_NEAR(bf16, one_step(c, *device).loss, 0.05);
}

// Batches reach the device through pinned memory, values intact.
TEST(Device, BatchToCopiesEveryTensor) {
  const auto device = target_device();
  if (!device) GTEST_SKIP() << "no GPU visible to torch";
  model::Batch b = testing::adapters::batch_for(model::named_config("tiny-bert"));
  b.token_type_ids = at::ones_like(b.input_ids);
  const model::Batch d = model::batch_to(b, *device);
  EXPECT_EQ(d.input_ids.device(), *device);
  EXPECT_TRUE(at::equal(d.input_ids.cpu(), b.input_ids));
  EXPECT_TRUE(at::equal(d.attention_mask.cpu(), b.attention_mask));
  EXPECT_TRUE(at::equal(d.labels.cpu(), b.labels));
  EXPECT_TRUE(at::equal(d.token_type_ids.cpu(), b.token_type_ids));
  EXPECT_FALSE(d.decoder_input_ids.defined());
}

}  // namespace
}  // namespace dt
