// model/safetensors.cpp — mapping, validating and writing safetensors files (see safetensors.h).
#include "model/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "util/error.h"

namespace dt::model {
namespace {

// A header is a few KB per thousand tensors; anything near this cap is an attack or corruption.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

[[noreturn]] void bad_file(const std::string& path, const std::string& problem) {
  throw_usage_error(path + ": " + problem);
}

const std::vector<std::pair<const char*, c10::ScalarType>>& dtype_table() {
  static const std::vector<std::pair<const char*, c10::ScalarType>> table = {
      {"F32", c10::ScalarType::Float},  {"F16", c10::ScalarType::Half},
      {"BF16", c10::ScalarType::BFloat16}, {"F64", c10::ScalarType::Double},
      {"I64", c10::ScalarType::Long},   {"I32", c10::ScalarType::Int},
      {"I16", c10::ScalarType::Short},  {"I8", c10::ScalarType::Char},
      {"U8", c10::ScalarType::Byte},    {"BOOL", c10::ScalarType::Bool}};
  return table;
}

// Reads a non-negative integer that fits in int64 from a JSON value, or says why not.
bool json_to_u63(const nlohmann::json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    *out = static_cast<uint64_t>(s);
  } else {
    return false;
  }
  return *out <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

SafetensorsEntry parse_entry(const std::string& path, const std::string& name,
                             const nlohmann::json& v, uint64_t data_size) {
  auto bad = [&](const std::string& problem) { bad_file(path, "tensor '" + name + "': " + problem); };
  if (!v.is_object()) bad("header entry is not a JSON object");
  SafetensorsEntry e;
  e.name = name;

  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) bad("missing or non-string \"dtype\"");
  if (!safetensors_dtype(dt->get<std::string>(), &e.dtype))
    bad("unknown dtype \"" + dt->get<std::string>() + "\"");

  auto shape = v.find("shape");
  if (shape == v.end() || !shape->is_array()) bad("missing or non-array \"shape\"");
  // numel x element size must not overflow: checked dimension by dimension.
  uint64_t nbytes = c10::elementSize(e.dtype);
  for (const auto& d : *shape) {
    uint64_t dim = 0;
    if (!json_to_u63(d, &dim)) bad("shape entry " + d.dump() + " is not a non-negative integer");
    if (dim != 0 && nbytes > std::numeric_limits<uint64_t>::max() / dim)
      bad("shape " + shape->dump() + " overflows the byte count");
    nbytes *= dim;
    e.shape.push_back(static_cast<int64_t>(dim));
  }

  auto offsets = v.find("data_offsets");
  if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2)
    bad("missing \"data_offsets\" [begin, end]");
  if (!json_to_u63((*offsets)[0], &e.begin) || !json_to_u63((*offsets)[1], &e.end))
    bad("data_offsets " + offsets->dump() + " are not non-negative integers");
  if (e.begin > e.end) bad("data_offsets " + offsets->dump() + " are not ordered (begin > end)");
  if (e.end > data_size)
    bad("data_offsets " + offsets->dump() + " lie outside the data section (" +
        std::to_string(data_size) + " bytes)");
  if (e.end - e.begin != nbytes)
    bad("data_offsets " + offsets->dump() + " span " + std::to_string(e.end - e.begin) +
        " bytes, but shape " + shape->dump() + " of " + dt->get<std::string>() + " needs " +
        std::to_string(nbytes));
  return e;
}

}  // namespace

bool safetensors_dtype(const std::string& name, c10::ScalarType* out) {
  for (const auto& [n, t] : dtype_table()) {
    if (name == n) {
      *out = t;
      return true;
    }
  }
  return false;
}

std::string safetensors_dtype_name(c10::ScalarType dtype) {
  for (const auto& [n, t] : dtype_table())
    if (t == dtype) return n;
  DT_FAIL(std::string("safetensors has no dtype for ") + c10::toString(dtype));
}

// ---- MappedFile ---------------------------------------------------------------------------------

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) bad_file(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    bad_file(path, "not a regular file");
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    // MAP_PRIVATE + PROT_WRITE: copy-on-write. Untouched pages are the page cache's, shared by every
    // process mapping the file; a write makes a private copy of that page and never reaches the disk.
    void* p = mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      bad_file(path, std::string("cannot map: ") + std::strerror(err));
    }
    f->data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);  // the mapping holds its own reference to the file
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(data_, size_);
}

at::Tensor MappedFile::view(uint64_t offset, const std::vector<int64_t>& shape,
                            c10::ScalarType dtype) const {
  auto options = at::TensorOptions().dtype(dtype);
  if (at::multiply_integers(shape) == 0) return at::empty(shape, options);
  uint8_t* ptr = data_ + offset;
  size_t align = c10::elementSize(dtype);
  std::shared_ptr<const MappedFile> keep = shared_from_this();
  at::Tensor t = at::from_blob(ptr, shape, [keep](void*) {}, options);
  // Vectorized kernels may assume natural alignment; a misaligned tensor (legal in the format, rare
  // in practice) is copied rather than risked.
  if (reinterpret_cast<uintptr_t>(ptr) % align != 0) return t.clone();
  return t;
}

// ---- SafetensorsFile ----------------------------------------------------------------------------

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.file_ = MappedFile::open(path);
  const uint64_t size = f.file_->size();
  if (size < 8)
    bad_file(path, "file is truncated: " + std::to_string(size) +
                       " bytes, too short for the 8-byte safetensors header length");
  uint64_t header_len = 0;
  const uint8_t* p = f.file_->data();
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | p[i];  // little-endian
  if (header_len > kMaxHeaderBytes)
    bad_file(path, "header length " + std::to_string(header_len) + " exceeds the " +
                       std::to_string(kMaxHeaderBytes >> 20) + " MB cap (not a safetensors file?)");
  if (header_len > size - 8)
    bad_file(path, "header length " + std::to_string(header_len) + " exceeds the file size (" +
                       std::to_string(size) + " bytes): truncated or not a safetensors file");
  f.data_start_ = 8 + header_len;
  const uint64_t data_size = size - f.data_start_;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(p + 8, p + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    bad_file(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) bad_file(path, "header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) bad_file(path, "__metadata__ is not a JSON object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string())
          bad_file(path, "__metadata__ value of '" + m.key() + "' is not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    f.entries_.push_back(parse_entry(path, it.key(), it.value(), data_size));
  }

  std::sort(f.entries_.begin(), f.entries_.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < f.entries_.size(); ++i) {
    const auto& prev = f.entries_[i - 1];
    const auto& cur = f.entries_[i];
    if (cur.begin < prev.end)
      bad_file(path, "tensors '" + prev.name + "' [" + std::to_string(prev.begin) + ", " +
                         std::to_string(prev.end) + ") and '" + cur.name + "' [" +
                         std::to_string(cur.begin) + ", " + std::to_string(cur.end) + ") overlap");
  }
  for (size_t i = 0; i < f.entries_.size(); ++i) f.index_[f.entries_[i].name] = i;
  return f;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) bad_file(path(), "has no tensor named '" + name + "'");
  return entries_[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  return file_->view(data_start_ + e.begin, e.shape, e.dtype);
}

// ---- writer -------------------------------------------------------------------------------------

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::map<std::string, at::Tensor> sorted;
  for (const auto& [name, t] : tensors) {
    DT_CHECK(name != "__metadata__", "a tensor cannot be named __metadata__");
    DT_CHECK(t.defined(), "save_safetensors: tensor '" + name + "' is undefined");
    DT_CHECK(sorted.emplace(name, t.detach().to(at::kCPU).contiguous()).second,
             "save_safetensors: tensor name '" + name + "' appears twice");
  }
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : sorted) {
    uint64_t nbytes = t.numel() * t.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();  // nlohmann's object is a std::map: keys come out sorted
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw_usage_error(tmp + ": cannot open for writing: " + std::strerror(errno));
    uint64_t n = text.size();
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : sorted)
      out.write(static_cast<const char*>(t.data_ptr()),
                static_cast<std::streamsize>(t.numel() * t.element_size()));
    out.flush();
    DT_CHECK(out.good(), tmp + ": write failed (disk full?)");
  }
  DT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0,
           "cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
}

}  // namespace dt::model
