// PyTorch 2.x's libtorch.so exports its own std::filesystem::remove_all, equivalent, ... which jump
// to address 0 when called (a segmentation fault in every test that removed a temp dir, on the GPU
// machine's torch 2.11). The top-level CMakeLists puts libstdc++ first among the executables' needed
// libraries so the dynamic linker binds our calls to libstdc++; these tests fail without that.
#include <dlfcn.h>
#include <unistd.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;

namespace {

std::string library_of(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "?";
  return info.dli_fname;
}

}  // namespace

TEST(LinkOrder, FilesystemBindsToLibstdcxx) {
  using RemoveAll = std::uintmax_t (*)(const fs::path&);
  using Equivalent = bool (*)(const fs::path&, const fs::path&);
  const auto remove_all = static_cast<RemoveAll>(&fs::remove_all);
  const auto equivalent = static_cast<Equivalent>(&fs::equivalent);
  EXPECT_NE(library_of(reinterpret_cast<const void*>(remove_all)).find("libstdc++"), std::string::npos)
      << "std::filesystem::remove_all binds to " << library_of(reinterpret_cast<const void*>(remove_all));
  EXPECT_NE(library_of(reinterpret_cast<const void*>(equivalent)).find("libstdc++"), std::string::npos)
      << "std::filesystem::equivalent binds to " << library_of(reinterpret_cast<const void*>(equivalent));
}

TEST(LinkOrder, RemoveAllWorksWithTorchLoaded) {
  // A torch call first, so libtorch is loaded and initialized as in every deltatune process.
  EXPECT_EQ(torch::ones({3}).sum().item<int64_t>(), 3);
  const fs::path dir = fs::temp_directory_path() / ("dt_link_order_" + std::to_string(::getpid()));
  fs::create_directories(dir / "a" / "b");
  std::ofstream(dir / "a" / "b" / "file") << "x";
  EXPECT_TRUE(fs::equivalent(dir / "a", dir / "a" / "b" / ".."));
  EXPECT_EQ(fs::remove_all(dir), 4u);  // dir, a, b, file
  EXPECT_FALSE(fs::exists(dir));
}
