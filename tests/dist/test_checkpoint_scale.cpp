// tests/dist/test_checkpoint_scale.cpp — issue 8's scale check: a T5-3B FISH 0.5% checkpoint (fake
// values over the real T5-3B tensor list, AdamW state, indices encoded by sparse/index_codec) is at
// most 1.1 × (values + optimizer bytes) + encoded index bytes, and reads back exactly.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <random>

#include "dist/checkpoint.h"
#include "model/config.h"
#include "sparse/index_codec.h"

namespace fs = std::filesystem;

namespace dt::dist {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

TEST(CheckpointScale, T5_3B_Fish_Half_Percent) {
  const double keep = 0.005;
  const auto metas = model::describe(model::named_config("t5-3b"));
  CheckpointState s;
  s.step = 1000;
  s.method = "fish(keep=0.005)";
  s.optimizer = "adamw";
  s.backbone = {"t5-3b", "{}", "", ""};
  s.rng_states = {std::vector<uint8_t>(5056, 1)};
  std::mt19937_64 rng(3);
  int64_t eligible = 0, values_bytes = 0, optimizer_bytes = 0, index_bytes = 0;
  at::manual_seed(3);
  for (const auto& m : metas) {
    const int64_t numel = m.numel();
    eligible += numel;
    const int64_t count = std::max<int64_t>(1, static_cast<int64_t>(numel * keep));
    // Sorted distinct indices: one per stride, jittered (gaps vary like a real mask's).
    const int64_t stride = numel / count;
    std::vector<int64_t> idx(count);
    for (int64_t i = 0; i < count; ++i) idx[i] = i * stride + static_cast<int64_t>(rng() % stride);
    SparseIndex ix;
    ix.name = m.name;
    ix.encoding = "deltatune-index-v1";
    ix.bytes = sparse::encode_indices(idx, numel);
    ix.count = count;
    ix.numel = numel;
    index_bytes += static_cast<int64_t>(ix.bytes.size());
    s.indices.push_back(std::move(ix));
    at::Tensor values = at::randn({count}) * 0.02;
    s.trainables.emplace_back(m.name, values);
    s.optimizer_state.emplace_back(m.name + ".step", at::full({}, 1000, at::kLong));
    s.optimizer_state.emplace_back(m.name + ".exp_avg", at::randn({count}) * 1e-3);
    s.optimizer_state.emplace_back(m.name + ".exp_avg_sq", at::rand({count}) * 1e-6);
    values_bytes += values.nbytes();
    optimizer_bytes += 8 + 2 * values.nbytes();
  }
  std::string pattern = (fs::temp_directory_path() / "dt-ckpt-scale-XXXXXX").string();
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  auto t0 = std::chrono::steady_clock::now();
  const std::string path = write_checkpoint(pattern, s, 1);
  const double write_s = seconds_since(t0);
  const auto file_bytes = static_cast<int64_t>(fs::file_size(path));
  t0 = std::chrono::steady_clock::now();
  const CheckpointState r = read_checkpoint(path);
  const double read_s = seconds_since(t0);
  ASSERT_EQ(r.trainables.size(), s.trainables.size());
  for (size_t i = 0; i < r.trainables.size(); i += 37) EXPECT_TRUE(at::equal(r.trainables[i].second, s.trainables[i].second));
  const double bound = 1.1 * static_cast<double>(values_bytes + optimizer_bytes) + static_cast<double>(index_bytes);
  std::printf("T5-3B FISH 0.5%%: %zu tensors, %lld eligible params, %lld values\n"
              "  values %lld B + optimizer %lld B + indices %lld B; file %lld B (%.4f x values+optimizer, "
              "bound %.0f B); write %.2f s, read+verify %.2f s\n",
              metas.size(), static_cast<long long>(eligible), static_cast<long long>(values_bytes / 4),
              static_cast<long long>(values_bytes), static_cast<long long>(optimizer_bytes),
              static_cast<long long>(index_bytes), static_cast<long long>(file_bytes),
              static_cast<double>(file_bytes - index_bytes) / static_cast<double>(values_bytes + optimizer_bytes),
              bound, write_s, read_s);
  EXPECT_LE(static_cast<double>(file_bytes), bound);
  fs::remove_all(pattern);
}

}  // namespace
}  // namespace dt::dist
