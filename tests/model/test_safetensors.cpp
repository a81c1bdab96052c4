// tests/model/test_safetensors.cpp — round trip, zero-copy views, and refusal of malformed files.
#include "model/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>

#include "test_llama_util.h"

namespace dt::model {
namespace {

using testing::expect_usage_error;
using testing::scratch;

// A file with the given header text and `data_bytes` zero bytes of data.
std::string raw_file(const std::string& name, const std::string& header, size_t data_bytes,
                     uint64_t declared_len = UINT64_MAX) {
  const uint64_t n = declared_len == UINT64_MAX ? header.size() : declared_len;
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  bytes += header;
  bytes += std::string(data_bytes, '\0');
  const std::string path = scratch(name);
  testing::write_bytes(path, bytes);
  return path;
}

TEST(Safetensors, RoundTripKeepsDtypesShapesValuesAndMetadata) {
  at::manual_seed(3);
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"b.f32", at::randn({3, 5})},
      {"a.i64", at::arange(7, at::kLong)},
      {"c.bf16", at::randn({4}).to(at::kBFloat16)},
      {"d.f16", at::randn({2, 2}).to(at::kHalf)},
      {"e.bool", at::tensor({1, 0, 1}).to(at::kBool)},
      {"f.u8", at::tensor({250, 3}, at::kByte)},
      {"g.scalar", at::tensor(2.5)},
      {"h.empty", at::empty({0, 3})},
      {"i.noncontiguous", at::randn({4, 6}).t()},
  };
  const std::string path = scratch("roundtrip.safetensors");
  save_safetensors(path, tensors, {{"format", "pt"}, {"note", "x"}});

  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "x");
  ASSERT_EQ(f.entries().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    at::Tensor back = f.tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(back, t.contiguous())) << name;
  }
  // Data laid out in sorted-name order; the data section starts 8-byte aligned.
  EXPECT_EQ(f.entries().front().name, "a.i64");
  EXPECT_EQ(f.entries()[1].name, "b.f32");
  const std::string bytes = testing::read_bytes(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ((8 + header_len) % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_len + f.entries().back().end);
}

TEST(Safetensors, ViewsAreZeroCopyAndOutliveTheFileObject) {
  const std::string path = scratch("views.safetensors");
  save_safetensors(path, {{"w", at::arange(64, at::kFloat).view({8, 8})}});
  at::Tensor w;
  const uint8_t* base = nullptr;
  uint64_t size = 0;
  {
    SafetensorsFile f = SafetensorsFile::open(path);
    base = f.mapping()->data();
    size = f.mapping()->size();
    w = f.tensor("w");
  }
  // The pointer lies inside the mapping (no copy), and the mapping is still alive.
  auto* p = static_cast<const uint8_t*>(w.data_ptr());
  EXPECT_GE(p, base);
  EXPECT_LT(p, base + size);
  EXPECT_EQ(w[7][7].item<float>(), 63.0f);
  // Copy-on-write: writing to a view changes this process's pages, never the file.
  w.add_(1.0f);
  EXPECT_EQ(w[0][0].item<float>(), 1.0f);
  EXPECT_EQ(SafetensorsFile::open(path).tensor("w")[0][0].item<float>(), 0.0f);
}

TEST(Safetensors, RefusesMalformedFilesNamingFileAndProblem) {
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

  std::string p = scratch("short.safetensors");
  testing::write_bytes(p, "abc");
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "truncated", "3 bytes"});

  p = raw_file("huge_len.safetensors", "{}", 0, 1ull << 40);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "header length 1099511627776", "cap"});

  p = raw_file("past_end.safetensors", "{}", 0, 4096);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "header length 4096 exceeds the file size"});

  p = raw_file("badjson.safetensors", "{\"t\": [1, 2", 0);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "not valid JSON"});

  p = raw_file("notobject.safetensors", "[1, 2]", 0);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "not a JSON object"});

  // Nesting bombs: the parser and the destructor of the JSON value must not recurse per level.
  p = raw_file("deep_open.safetensors", std::string(1 << 20, '['), 0);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "not valid JSON"});
  p = raw_file("deep_closed.safetensors", std::string(1 << 20, '[') + std::string(1 << 20, ']'), 0);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "not a JSON object"});
  p = raw_file("deep_entry.safetensors", "{\"t\":" + std::string(1 << 20, '[') + std::string(1 << 20, ']') + "}", 0);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "'t'", "not a JSON object"});

  p = raw_file("range.safetensors", R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "'t'", "outside the data section"});

  p = raw_file("overlap.safetensors",
               "{" + ok_entry + R"(,"u":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "'t'", "'u'", "overlap"});

  p = raw_file("count.safetensors", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "'t'", "span 8 bytes", "needs 12"});

  p = raw_file("order.safetensors", R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "not ordered"});

  p = raw_file("dtype.safetensors", R"({"t":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", 8);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "unknown dtype \"F8\""});

  p = raw_file("negshape.safetensors", R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "not a non-negative integer"});

  p = raw_file("overflow.safetensors",
               R"({"t":{"dtype":"F64","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,8]}})", 8);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "overflows"});

  p = raw_file("offsets.safetensors", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "data_offsets"});

  p = raw_file("meta.safetensors", "{" + ok_entry + R"(,"__metadata__":{"k":3}})", 8);
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "__metadata__", "'k'"});

  p = scratch("absent.safetensors");
  expect_usage_error([&] { SafetensorsFile::open(p); }, {p, "cannot open"});

  // A valid file still reads after all that, and asking for an absent tensor names it.
  p = raw_file("valid.safetensors", "{" + ok_entry + "}", 8);
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.tensor("t").sizes(), at::IntArrayRef({2}));
  expect_usage_error([&] { f.tensor("nope"); }, {p, "'nope'"});
}

TEST(Safetensors, RandomlyCorruptedHeadersOpenOrThrowUsageError) {
  // Every corruption of the header either still describes a consistent file (and then every tensor
  // reads back inside the mapping) or is refused with a UsageError; nothing else may happen.
  const std::string path = scratch("fuzz_src.safetensors");
  save_safetensors(path, {{"a", at::ones({3, 4})}, {"b", at::arange(5, at::kLong)}, {"c", at::ones({2}, at::kHalf)}},
                   {{"k", "v"}});
  const std::string good = testing::read_bytes(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(good[i]);
  std::mt19937 rng(1234);
  const std::string alphabet = "0123456789[]{}\",:-\" FIabe";
  int opened = 0, refused = 0;
  const std::string fuzz = scratch("fuzz.safetensors");
  for (int trial = 0; trial < 600; ++trial) {
    std::string bytes = good;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % (8 + header_len);  // the length field or the JSON
      bytes[pos] = pos < 8 ? static_cast<char>(rng() % 256) : alphabet[rng() % alphabet.size()];
    }
    testing::write_bytes(fuzz, bytes);
    try {
      SafetensorsFile f = SafetensorsFile::open(fuzz);
      for (const auto& entry : f.entries()) {
        at::Tensor t = f.tensor(entry.name);
        if (t.numel() > 0) t.sum();  // touch every byte of the view
      }
      ++opened;
    } catch (const dt::UsageError&) {
      ++refused;
    }
  }
  EXPECT_EQ(opened + refused, 600);
  std::printf("corrupted headers: %d opened consistently, %d refused\n", opened, refused);
  EXPECT_GT(refused, 300);
}

TEST(Safetensors, WriterRejectsDuplicateNames) {
  EXPECT_THROW(save_safetensors(scratch("dup.safetensors"), {{"a", at::ones({1})}, {"a", at::ones({1})}}),
               dt::Error);
}

}  // namespace
}  // namespace dt::model
