// Methods over a backbone whose frozen weights stay bf16 (a bf16 T5 file is mapped, not converted):
// their trainable tensors are float32, the forward and backward run, and gradients reach them. `full`
// trains a float32 copy; LST's side network computes in float32 from the bf16 backbone.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>

#include "model/device.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "model/t5.h"
#include "tests/peft/test_adapters_util.h"
#include "util/error.h"

namespace dt::testing::adapters {
namespace {

std::string bf16_tiny_t5() {
  const auto f32 = model::make_backbone(model::named_config("tiny-t5"), 0);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [n, p] : f32->named_parameters()) tensors.emplace_back(n, p.detach().to(at::kBFloat16));
  const std::string path = ::testing::TempDir() + "/dt_peft_bf16_tiny_t5.safetensors";
  model::save_safetensors(path, tensors, model::config_metadata(f32->config()));
  return path;
}

// --train.dtype bf16: train casts a float32 backbone before the methods attach (nothing is frozen yet):
// every weight but the task head becomes bf16, and the methods then train float32 tensors over it.
TEST(Bf16Backbone, TrainDtypeCastsEveryWeightButTheHead) {
  auto backbone = model::make_backbone(model::named_config("tiny-t5"), 2);
  dynamic_cast<model::T5Backbone&>(*backbone).set_label_token_ids({5, 9});
  model::backbone_to(*backbone, c10::Device(c10::kCPU), model::frozen_dtype("bf16"));
  int64_t cast = 0;
  for (const auto& [name, t] : backbone->named_parameters()) {
    EXPECT_EQ(t.scalar_type(), model::is_task_head(name) ? at::kFloat : at::kBFloat16) << name;
    cast += t.scalar_type() == at::kBFloat16;
  }
  EXPECT_GT(cast, 10);
  const auto set = method_set({"--method", "lora", "--lora.targets", "q,v"});
  const auto trainables = set.apply(*backbone);
  for (const auto& t : trainables) EXPECT_EQ(t.tensor.scalar_type(), at::kFloat) << t.name;
  const auto out = set.forward(*backbone, batch_for(backbone->config()));
  out.loss.backward();
  EXPECT_TRUE(std::isfinite(out.loss.item<double>()));
  for (const auto& t : trainables) EXPECT_TRUE(t.tensor.grad().defined()) << t.name;
  // After the methods attached (eval of a checkpoint), what they train is left in float32.
  auto full = model::make_backbone(model::named_config("tiny-t5"), 2);
  const auto full_set = method_set({"--method", "full"});
  const auto full_trainables = full_set.apply(*full);
  model::backbone_to(*full, c10::Device(c10::kCPU), model::frozen_dtype("bf16"), /*only_frozen=*/true);
  for (const auto& t : full_trainables) EXPECT_EQ(t.tensor.scalar_type(), at::kFloat) << t.name;
  EXPECT_FALSE(model::frozen_dtype("fp32").has_value());
  EXPECT_THROW(model::frozen_dtype("fp8"), dt::UsageError);
}

TEST(Bf16Backbone, MethodsTrainFloat32TensorsOverBf16Weights) {
  const std::string path = bf16_tiny_t5();
  for (const std::vector<std::string>& args : {std::vector<std::string>{"--method", "full"},
                                              {"--method", "lst", "--lst.r", "2"},
                                              {"--method", "lora"},
                                              {"--method", "fish", "--fish.select", "magnitude"}}) {
    auto backbone = model::load_backbone(path, 2);
    ASSERT_EQ(backbone->config().dtype, at::kBFloat16);
    dynamic_cast<model::T5Backbone&>(*backbone).set_label_token_ids({5, 9});
    const auto set = method_set(args);
    const auto trainables = set.apply(*backbone);
    const model::Batch batch = batch_for(backbone->config());
    const auto out = set.forward(*backbone, batch);
    ASSERT_TRUE(out.loss.defined()) << args[1];
    EXPECT_TRUE(std::isfinite(out.loss.item<double>())) << args[1];
    out.loss.backward();
    for (const auto& t : trainables) {
      EXPECT_EQ(t.tensor.scalar_type(), at::kFloat) << args[1] << " " << t.name;
      ASSERT_TRUE(t.tensor.grad().defined()) << args[1] << " " << t.name;
    }
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace dt::testing::adapters
