// model/safetensors.h — the safetensors format (reader and writer) over a memory-mapped file.
//
// Design note: frozen weights are the bulk of a fine-tuning job's memory, and every rank of a node
// holds the same ones. Mapping the file and handing out at::from_blob views (the mapping kept alive
// by the views' deleter) means no copy is ever made: the pages come from the page cache and are
// shared by every process of the node that maps the same file. The mapping is private and writable
// (copy-on-write): pages stay shared until someone writes to them, so a method that does train a
// "frozen" tensor in place (full fine-tuning) gets its own copy of the touched pages instead of a
// segmentation fault, and the file on disk never changes.
//
// The header is untrusted input: every field is checked (length against the file and a 100 MB cap,
// JSON shape, dtype, shape, byte counts without overflow, offsets ordered, inside the data section
// and not overlapping) before any pointer is formed. Problems raise dt::UsageError naming the file.
//
// Format (https://github.com/huggingface/safetensors): u64 little-endian header length N, N bytes of
// JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"key": "value"}}, then the data section; offsets are relative to its start.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dt::model {

// A whole file mapped into memory (private, copy-on-write, see above). Shared by the tensor views.
class MappedFile : public std::enable_shared_from_this<MappedFile> {
 public:
  // Throws dt::UsageError naming the file when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // A tensor over [offset, offset + numel * element size) that keeps this mapping alive. The caller
  // has checked the range. Copies instead when the address is not aligned to the element size.
  at::Tensor view(uint64_t offset, const std::vector<int64_t>& shape, c10::ScalarType dtype) const;

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

struct SafetensorsEntry {
  std::string name;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data section
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws dt::UsageError "<path>: <problem>" on any malformed field.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  // In data-section order.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // Throws dt::UsageError naming the file and the tensor when absent.
  const SafetensorsEntry& entry(const std::string& name) const;
  // Zero-copy view of the tensor's bytes (see MappedFile::view).
  at::Tensor tensor(const std::string& name) const;
  const std::shared_ptr<MappedFile>& mapping() const { return file_; }

 private:
  std::shared_ptr<MappedFile> file_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (any device/dtype the format knows; made contiguous on the CPU) to `path`:
// the header's keys sorted, the data laid out in that order, the header padded with spaces so that
// the data section starts 8-byte aligned. Written to "<path>.tmp" then renamed, so a reader never
// sees half a file. Duplicate names and unsupported dtypes throw dt::Error.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// "F32" <-> c10::ScalarType::Float, ... (BF16, F16, F64, I64, I32, I16, I8, U8, BOOL).
bool safetensors_dtype(const std::string& name, c10::ScalarType* out);
std::string safetensors_dtype_name(c10::ScalarType dtype);

}  // namespace dt::model
