// The blocked bf16 linear (model/cpu_bf16_linear.h) against a float64 reference: forward, the gradient of
// x and of W, with W's rows not a multiple of the block (600 rows of 1000 = blocks of 262, 262, 76) and a
// 3-D x; and against ATen's own bf16 linear. Tolerances are bf16's: its results are rounded to 8 significant bits.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/cpu_bf16_linear.h"

namespace dt::model {
namespace {

double rel_err(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(torch::kDouble) - want).abs().max().item<double>() / want.abs().max().item<double>();
}

TEST(CpuBf16Linear, MatchesFloat64ReferenceForwardAndBackward) {
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({2, 3, 1000}).to(torch::kBFloat16).requires_grad_(true);
  const at::Tensor w = torch::randn({600, 1000}).to(torch::kBFloat16).requires_grad_(true);
  const at::Tensor g = torch::randn({2, 3, 600}).to(torch::kBFloat16);

  const at::Tensor y = blocked_bf16_linear(x, w);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 600}));
  const at::Tensor xd = x.detach().to(torch::kDouble), wd = w.detach().to(torch::kDouble);
  const at::Tensor gd = g.to(torch::kDouble);
  EXPECT_LT(rel_err(y, torch::matmul(xd, wd.t())), 1.0 / 128);
  // ATen's bf16 linear (accumulating in float32 too) agrees as closely.
  EXPECT_LT(rel_err(y, torch::linear(x.detach(), w.detach()).to(torch::kDouble)), 1.0 / 128);

  y.backward(g);
  ASSERT_TRUE(x.grad().defined() && w.grad().defined());
  EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
  EXPECT_EQ(w.grad().scalar_type(), torch::kBFloat16);
  EXPECT_LT(rel_err(x.grad(), torch::matmul(gd, wd)), 1.0 / 128);
  EXPECT_LT(rel_err(w.grad(), torch::matmul(gd.reshape({-1, 600}).t(), xd.reshape({-1, 1000}))), 1.0 / 128);
}

// A frozen W (no method delta on it) gets no gradient (its gᵀ·x is skipped); g·W still flows to x.
TEST(CpuBf16Linear, FrozenWeightGetsNoGradient) {
  torch::manual_seed(4);
  const at::Tensor x = torch::randn({5, 2048}).to(torch::kBFloat16).requires_grad_(true);
  const at::Tensor w = torch::randn({513, 2048}).to(torch::kBFloat16);  // blocks of 128 rows
  blocked_bf16_linear(x, w).sum().backward();
  EXPECT_FALSE(w.grad().defined());
  const at::Tensor want = w.to(torch::kDouble).sum(0).expand({5, 2048});
  EXPECT_LT(rel_err(x.grad(), want), 1.0 / 128);
}

// W + delta, as FISH's hook builds it: the gradient reaches the delta's leaf through W's.
TEST(CpuBf16Linear, GradientReachesAMethodDeltaOnW) {
  torch::manual_seed(5);
  const at::Tensor x = torch::randn({4, 32}).to(torch::kBFloat16);
  const at::Tensor w = torch::randn({260, 32}).to(torch::kBFloat16);
  const at::Tensor delta = torch::zeros({260, 32}).requires_grad_(true);  // float32, as methods keep theirs
  blocked_bf16_linear(x, w + delta.to(torch::kBFloat16)).sum().backward();
  ASSERT_TRUE(delta.grad().defined());
  const at::Tensor want = x.to(torch::kDouble).sum(0).expand({260, 32});
  EXPECT_LT(rel_err(delta.grad(), want), 1.0 / 128);
}

}  // namespace
}  // namespace dt::model
