// dist/checkpoint.cpp — HDF5 checkpoints (see checkpoint.h for the layout and the atomicity rules).
#include "dist/checkpoint.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "util/error.h"
#include "util/log.h"

namespace fs = std::filesystem;

namespace dt::dist {

// ---- HDF5 plumbing: silenced error stack, its text, RAII ids ------------------------------------
namespace {

constexpr const char* kFormatName = "deltatune-checkpoint";
constexpr size_t kChunkTargetBytes = 1 << 20;
constexpr int kDeflateLevel = 1;  // fast; floats gain little from more

// HDF5 prints its error stack to stderr by default; we turn it into our messages instead.
class QuietHdf5 {
 public:
  QuietHdf5() {
    // A corrupted file can leave objects HDF5 cannot evict; its atexit clean-up then prints "infinite
    // loop closing library". Every file is closed explicitly here, so that clean-up is not needed.
    static const bool no_atexit = (H5dont_atexit(), true);
    (void)no_atexit;
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

herr_t collect_error(unsigned, const H5E_error2_t* e, void* out) {
  auto& text = *static_cast<std::string*>(out);
  if (!text.empty()) text += "; ";
  text += std::string(e->func_name ? e->func_name : "?") + ": " + (e->desc ? e->desc : "");
  return 0;
}

// The current HDF5 error stack as one line (then cleared).
std::string hdf5_error_text() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &text);
  H5Eclear2(H5E_DEFAULT);
  return text.empty() ? "unknown HDF5 error" : text;
}

// Raised inside this file for any failed HDF5 call; turned into dt::Error with context by callers.
struct Hdf5Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

hid_t check(hid_t id, const std::string& what) {
  if (id < 0) {
    const std::string text = hdf5_error_text();
    if (text.find("checksum") != std::string::npos) throw Hdf5Failure(what + " failed its metadata checksum");
    throw Hdf5Failure(what + ": " + text);
  }
  return id;
}

class Id {
 public:
  Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Id() { reset(); }
  Id(Id&& other) noexcept : id_(other.id_), close_(other.close_) { other.id_ = -1; }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  operator hid_t() const { return id_; }
  // Closes now; returns false when the close failed (for files: data could not be flushed).
  bool reset() {
    bool ok = true;
    if (id_ >= 0 && close_) ok = close_(id_) >= 0;
    id_ = -1;
    return ok;
  }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// ---- dtypes ------------------------------------------------------------------------------------

struct DtypeInfo {
  c10::ScalarType scalar;
  const char* name;
};
const DtypeInfo kDtypes[] = {
    {at::kFloat, "float32"}, {at::kDouble, "float64"}, {at::kHalf, "float16"}, {at::kBFloat16, "bfloat16"},
    {at::kLong, "int64"},    {at::kInt, "int32"},      {at::kShort, "int16"},  {at::kChar, "int8"},
    {at::kByte, "uint8"},    {at::kBool, "bool"}};

std::string dtype_name(c10::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (d.scalar == t) return d.name;
  }
  DT_FAIL(std::string("checkpoint: unsupported tensor dtype ") + c10::toString(t));
}

c10::ScalarType dtype_from_name(const std::string& name, const std::string& where) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.scalar;
  }
  throw Hdf5Failure(where + ": unknown dtype attribute '" + name + "'");
}

// IEEE half as an HDF5 float type (HDF5 1.10 has none predefined); h5py maps it to numpy float16.
hid_t make_half_type() {
  hid_t t = check(H5Tcopy(H5T_IEEE_F32LE), "float16 type");
  // Checked: a half type left at 4 bytes would store float16 tensors under a wrong type.
  if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0) {
    H5Tclose(t);
    check(-1, "float16 type");
  }
  return t;
}

Id copy_type(hid_t predefined) { return Id(check(H5Tcopy(predefined), "HDF5 type"), H5Tclose); }

// The HDF5 type of a dtype, in the file and in memory (little-endian x86/ARM: the same here).
// bfloat16 is stored as uint16 (attribute dtype = "bfloat16"): no HDF5 reader knows bf16.
Id h5_type(c10::ScalarType t) {
  switch (t) {
    case at::kFloat: return copy_type(H5T_IEEE_F32LE);
    case at::kDouble: return copy_type(H5T_IEEE_F64LE);
    case at::kHalf: return Id(make_half_type(), H5Tclose);
    case at::kBFloat16: return copy_type(H5T_STD_U16LE);
    case at::kLong: return copy_type(H5T_STD_I64LE);
    case at::kInt: return copy_type(H5T_STD_I32LE);
    case at::kShort: return copy_type(H5T_STD_I16LE);
    case at::kChar: return copy_type(H5T_STD_I8LE);
    case at::kByte:
    case at::kBool: return copy_type(H5T_STD_U8LE);
    default: DT_FAIL(std::string("checkpoint: unsupported tensor dtype ") + c10::toString(t));
  }
}

Id string_type(size_t size) {
  Id t = copy_type(H5T_C_S1);
  check(H5Tset_size(t, std::max<size_t>(size, 1)), "string type");
  check(H5Tset_strpad(t, H5T_STR_NULLPAD), "string type");
  check(H5Tset_cset(t, H5T_CSET_UTF8), "string type");
  return t;
}

// ---- writing -----------------------------------------------------------------------------------

void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  Id type = string_type(value.size());
  Id space(check(H5Screate(H5S_SCALAR), "dataspace"), H5Sclose);
  Id attr(check(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), std::string("attribute ") + name),
          H5Aclose);
  const std::string padded = value.empty() ? std::string(1, '\0') : value;
  check(H5Awrite(attr, type, padded.data()), std::string("attribute ") + name);
}

template <typename T>
void write_number_attr(hid_t obj, const char* name, T value) {
  const bool is_double = std::is_floating_point<T>::value;
  Id space(check(H5Screate(H5S_SCALAR), "dataspace"), H5Sclose);
  Id attr(check(H5Acreate2(obj, name, is_double ? H5T_IEEE_F64LE : H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT),
                std::string("attribute ") + name),
          H5Aclose);
  check(H5Awrite(attr, is_double ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64, &value), std::string("attribute ") + name);
}

// Chunks of about 1 MiB: halve the leading dimensions until a chunk fits.
std::vector<hsize_t> chunk_dims(const std::vector<hsize_t>& dims, size_t element_size) {
  std::vector<hsize_t> chunk(dims);
  for (auto& c : chunk) c = std::max<hsize_t>(c, 1);
  auto bytes = [&] {
    size_t b = element_size;
    for (auto c : chunk) b *= c;
    return b;
  };
  for (size_t i = 0; i < chunk.size() && bytes() > kChunkTargetBytes; ++i) {
    while (chunk[i] > 1 && bytes() > kChunkTargetBytes) chunk[i] = (chunk[i] + 1) / 2;
  }
  return chunk;
}

// Creates group/name with the checkpoint's filters and writes `data` (count elements of `type`).
Id create_dataset(hid_t group, const std::string& name, hid_t type, const std::vector<hsize_t>& dims,
                  const void* data) {
  DT_CHECK(!name.empty() && name.find('/') == std::string::npos && name != ".",
           "checkpoint: tensor name '" + name + "' cannot be an HDF5 dataset name");
  Id space(check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), "dataspace " + name),
           H5Sclose);
  hsize_t numel = 1;
  for (auto d : dims) numel *= d;
  Id dcpl(check(H5Pcreate(H5P_DATASET_CREATE), "dataset properties " + name), H5Pclose);
  if (numel > 0) {
    // fletcher32 last: it checksums the stored (compressed) bytes and is checked first on read.
    const size_t element_size = H5Tget_size(type);
    if (element_size == 0) check(-1, "element size of " + name);
    const auto chunk = chunk_dims(dims, element_size);
    check(H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data()), "chunking " + name);
    check(H5Pset_shuffle(dcpl), "shuffle " + name);
    check(H5Pset_deflate(dcpl, kDeflateLevel), "deflate " + name);
    check(H5Pset_fletcher32(dcpl), "fletcher32 " + name);
  }
  Id dset(check(H5Dcreate2(group, name.c_str(), type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), "dataset " + name),
          H5Dclose);
  if (numel > 0) check(H5Dwrite(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "writing dataset " + name);
  return dset;
}

std::string shape_text(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

void write_tensor(hid_t group, const std::string& name, const at::Tensor& tensor, const std::string& what,
                  const std::string& units) {
  const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  std::vector<hsize_t> dims;
  for (auto s : t.sizes()) dims.push_back(static_cast<hsize_t>(s));
  if (dims.empty()) dims.push_back(1);  // 0-d: one element; attribute shape says "[]"
  Id type = h5_type(t.scalar_type());
  Id dset = create_dataset(group, name, type, dims, t.data_ptr());
  write_string_attr(dset, "dtype", dtype_name(t.scalar_type()));
  write_string_attr(dset, "shape", shape_text(t.sizes()));
  write_string_attr(dset, "what", what);
  write_string_attr(dset, "units", units);
}

void write_bytes(hid_t group, const std::string& name, const std::vector<uint8_t>& bytes, const std::string& what) {
  Id dset = create_dataset(group, name, H5T_STD_U8LE, {bytes.size()}, bytes.data());
  write_string_attr(dset, "dtype", "uint8");
  write_string_attr(dset, "what", what);
}

void write_text(hid_t group, const std::string& name, const std::string& text, const std::string& what) {
  Id type = string_type(text.size());
  const std::string padded = text.empty() ? std::string(1, '\0') : text;
  Id dset = create_dataset(group, name, type, {1}, padded.data());
  write_string_attr(dset, "what", what);
}

// Links and attributes stay in the object header ("compact"), up to HDF5's limit of 65,535: the 1.10
// format checksums object headers, while the "dense" storage HDF5 otherwise switches to past 8 members
// (a fractal heap and B-tree) has unchecksummed blocks. A flipped byte there reached HDF5's own parser,
// which freed a garbage pointer (found by the ASan test suite, Checkpoint.FlippedBytesAreAlwaysDetected).
constexpr unsigned kMaxCompact = 65535;

Id create_group(hid_t parent, const char* name, const std::string& what) {
  Id gcpl(check(H5Pcreate(H5P_GROUP_CREATE), std::string("group properties ") + name), H5Pclose);
  // Creation order is kept so tensors come back in the order they were saved.
  check(H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED),
        std::string("creation order of group ") + name);
  check(H5Pset_link_phase_change(gcpl, kMaxCompact, kMaxCompact), std::string("link storage of group ") + name);
  Id g(check(H5Gcreate2(parent, name, H5P_DEFAULT, gcpl, H5P_DEFAULT), std::string("group ") + name), H5Gclose);
  write_string_attr(g, "what", what);
  return g;
}

Id file_access() {
  Id fapl(check(H5Pcreate(H5P_FILE_ACCESS), "file access properties"), H5Pclose);
  // The 1.10 format: checksummed superblock, object headers and chunk indices. Checked: without it the
  // file would silently be written in the old, unchecksummed format.
  check(H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST), "requesting the HDF5 1.10 file format");
  check(H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG), "file close degree");
  return fapl;
}

void write_file(const std::string& path, const CheckpointState& s) {
  Id fapl = file_access();
  Id fcpl(check(H5Pcreate(H5P_FILE_CREATE), "file creation properties"), H5Pclose);
  // The root group holds the run's attributes (step, lr, backbone identity, ...): in its header too.
  check(H5Pset_attr_phase_change(fcpl, kMaxCompact, kMaxCompact), "attribute storage of the root group");
  Id file(check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl, fapl), "creating " + path), H5Fclose);
  write_string_attr(file, "format", kFormatName);
  write_number_attr<int64_t>(file, "format_version", kCheckpointFormatVersion);
  write_number_attr<int64_t>(file, "step", s.step);
  write_number_attr<int64_t>(file, "epoch", s.epoch);
  write_number_attr<int64_t>(file, "sampler_position", s.sampler_position);
  if (!s.task_sampler.empty()) write_string_attr(file, "task_sampler", s.task_sampler);
  write_number_attr<int64_t>(file, "world_size", s.world_size);
  write_number_attr<double>(file, "lr", s.lr);
  write_string_attr(file, "schedule", s.schedule);
  write_string_attr(file, "optimizer", s.optimizer);
  write_string_attr(file, "backbone_name", s.backbone.name);
  write_string_attr(file, "backbone_sha256", s.backbone.weights_sha256);
  write_string_attr(file, "backbone_tensors_hash", s.backbone.tensors_hash);
  write_string_attr(file, "description",
                    "deltatune fine-tuning checkpoint: the trained tensors, optimizer state, sparse indices, RNG "
                    "states and metadata; the frozen backbone is not included (see backbone_*)");
  {
    Id g = create_group(file, "trainable", "trainable tensors of the method(s), by Hugging Face name");
    for (const auto& [name, t] : s.trainables) write_tensor(g, name, t, "trained values", "as the parameter");
  }
  {
    Id g = create_group(file, "optimizer", "optimizer state of " + s.optimizer + ", named <param>.<slot>");
    for (const auto& [name, t] : s.optimizer_state) {
      const bool step = name.size() >= 5 && name.compare(name.size() - 5, 5, ".step") == 0;
      write_tensor(g, name, t, step ? "optimizer steps taken by the parameter" : "optimizer moment",
                   step ? "steps" : "as the optimizer defines it");
    }
  }
  {
    Id g = create_group(file, "indices", "flat indices of the trained entries of sparse tensors, encoded");
    for (const auto& ix : s.indices) {
      write_bytes(g, ix.name, ix.bytes, "sorted flat indices into the dense tensor, encoded as 'encoding' says");
      Id d(check(H5Dopen2(g, ix.name.c_str(), H5P_DEFAULT), "dataset " + ix.name), H5Dclose);
      write_string_attr(d, "encoding", ix.encoding);
      write_number_attr<int64_t>(d, "count", ix.count);
      write_number_attr<int64_t>(d, "numel", ix.numel);
    }
  }
  {
    Id g = create_group(file, "rng", "per-rank random generator states (torch CPU generator get_state bytes)");
    for (size_t r = 0; r < s.rng_states.size(); ++r) {
      write_bytes(g, "rank" + std::to_string(r), s.rng_states[r], "RNG state of rank " + std::to_string(r));
    }
  }
  {
    Id g = create_group(file, "meta", "the run that wrote this checkpoint");
    write_text(g, "config", s.config_ini, "resolved configuration (INI), as --print-config shows it");
    write_text(g, "backbone_config", s.backbone.config, "backbone configuration");
    write_text(g, "method", s.method, "method description (MethodSet::describe)");
  }
  check(H5Fflush(file, H5F_SCOPE_LOCAL), "flushing " + path);
  if (!file.reset()) throw Hdf5Failure("closing " + path + ": " + hdf5_error_text());
}

// ---- reading -----------------------------------------------------------------------------------

// H5Aread writes every element of the attribute's dataspace: an attribute that a damaged or hand-made file
// stores as an array would overrun the single value read here (found by fuzz/checkpoint.cpp).
void require_one_element(hid_t attr, const char* name) {
  Id space(check(H5Aget_space(attr), std::string("attribute ") + name), H5Sclose);
  const hssize_t points = H5Sget_simple_extent_npoints(space);
  if (points != 1) {
    throw Hdf5Failure(std::string("attribute ") + name + " holds " + std::to_string(points) +
                      " values, expected one");
  }
}

std::string read_string_attr(hid_t obj, const char* name) {
  Id attr(check(H5Aopen(obj, name, H5P_DEFAULT), std::string("attribute ") + name), H5Aclose);
  require_one_element(attr, name);
  Id ftype(check(H5Aget_type(attr), std::string("attribute ") + name), H5Tclose);
  if (H5Tget_class(ftype) != H5T_STRING) throw Hdf5Failure(std::string("attribute ") + name + " is not a string");
  const size_t size = H5Tget_size(ftype);
  if (size == 0) throw Hdf5Failure(std::string("attribute ") + name + " has no size");
  Id mtype = string_type(size);
  std::string value(size, '\0');
  check(H5Aread(attr, mtype, value.data()), std::string("attribute ") + name);
  value.resize(strnlen(value.data(), value.size()));
  return value;
}

template <typename T>
T read_number_attr(hid_t obj, const char* name) {
  static_assert(sizeof(T) == 8, "read as a 64-bit integer or double");
  Id attr(check(H5Aopen(obj, name, H5P_DEFAULT), std::string("attribute ") + name), H5Aclose);
  require_one_element(attr, name);
  T value{};
  check(H5Aread(attr, std::is_floating_point<T>::value ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64, &value),
        std::string("attribute ") + name);
  return value;
}

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* out) {
  static_cast<std::vector<std::string>*>(out)->push_back(name);
  return 0;
}

std::vector<std::string> member_names(hid_t group) {
  std::vector<std::string> names;
  check(H5Literate(group, H5_INDEX_CRT_ORDER, H5_ITER_INC, nullptr, collect_name, &names), "listing group");
  return names;
}

// Reads one dataset into `out` (bytes); a checksum failure is named as such.
void read_dataset(hid_t dset, hid_t mem_type, void* out, const std::string& where) {
  if (H5Dread(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) {
    const std::string text = hdf5_error_text();
    if (text.find("Fletcher32") != std::string::npos || text.find("checksum") != std::string::npos) {
      throw Hdf5Failure("dataset " + where + " failed its checksum");
    }
    throw Hdf5Failure("cannot read dataset " + where + " (" + text + ")");
  }
}

std::vector<hsize_t> dataset_dims(hid_t dset) {
  Id space(check(H5Dget_space(dset), "dataspace"), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 0) throw Hdf5Failure("bad dataspace");
  std::vector<hsize_t> dims(rank);
  if (H5Sget_simple_extent_dims(space, dims.data(), nullptr) < 0) throw Hdf5Failure("bad dataspace");
  return dims;
}

std::vector<int64_t> parse_shape(const std::string& text, const std::string& where) {
  std::vector<int64_t> shape;
  if (text.size() < 2 || text.front() != '[' || text.back() != ']') throw Hdf5Failure(where + ": bad shape attribute");
  std::stringstream in(text.substr(1, text.size() - 2));
  std::string item;
  while (std::getline(in, item, ',')) {
    int64_t size = -1;
    try {
      size = std::stoll(item);
    } catch (const std::exception&) {
    }
    if (size < 0) throw Hdf5Failure(where + ": bad shape attribute '" + text + "'");
    shape.push_back(size);
  }
  return shape;
}

// The element count of untrusted sizes (attributes, dataspaces), refusing what overflows int64.
template <typename Size>
int64_t element_count(const std::vector<Size>& sizes, const std::string& where) {
  int64_t n = 1;
  for (Size s : sizes) {
    if (static_cast<uint64_t>(s) > static_cast<uint64_t>(INT64_MAX) ||
        __builtin_mul_overflow(n, static_cast<int64_t>(s), &n)) {
      throw Hdf5Failure(where + ": a size does not fit in 64 bits");
    }
  }
  return n;
}

at::Tensor read_tensor(hid_t group, const std::string& name, const std::string& where) {
  Id dset(check(H5Dopen2(group, name.c_str(), H5P_DEFAULT), "dataset " + where), H5Dclose);
  const c10::ScalarType dtype = dtype_from_name(read_string_attr(dset, "dtype"), where);
  const std::vector<int64_t> shape = parse_shape(read_string_attr(dset, "shape"), where);
  const int64_t numel = element_count(shape, where + " (shape attribute)");
  const int64_t stored = element_count(dataset_dims(dset), where);
  Id type = h5_type(dtype);
  Id ftype(check(H5Dget_type(dset), "type of " + where), H5Tclose);
  if (stored != std::max<int64_t>(numel, shape.empty() ? 1 : 0) || H5Tget_size(ftype) != H5Tget_size(type)) {
    throw Hdf5Failure("dataset " + where + " does not match its shape/dtype attributes");
  }
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  if (numel > 0) read_dataset(dset, type, t.data_ptr(), where);
  return t;
}

std::vector<uint8_t> read_bytes(hid_t dset, const std::string& where) {
  const int64_t n = element_count(dataset_dims(dset), where);
  std::vector<uint8_t> bytes(n);
  if (n > 0) read_dataset(dset, H5T_NATIVE_UINT8, bytes.data(), where);
  return bytes;
}

std::string read_text(hid_t group, const char* name) {
  const std::string where = std::string("/meta/") + name;
  Id dset(check(H5Dopen2(group, name, H5P_DEFAULT), "dataset " + where), H5Dclose);
  Id ftype(check(H5Dget_type(dset), "type of " + where), H5Tclose);
  // One string is read: a dataset holding several would overrun the buffer (as attributes would, above).
  if (element_count(dataset_dims(dset), where) != 1) throw Hdf5Failure("dataset " + where + " is not one string");
  const size_t size = H5Tget_size(ftype);
  if (size == 0) throw Hdf5Failure("dataset " + where + " has no size");
  Id mtype = string_type(size);
  std::string text(size, '\0');
  read_dataset(dset, mtype, text.data(), where);
  text.resize(strnlen(text.data(), text.size()));
  return text;
}

void read_meta(hid_t file, CheckpointState& s) {
  if (H5Aexists(file, "format") <= 0 || read_string_attr(file, "format") != kFormatName) {
    throw Hdf5Failure("not a deltatune checkpoint (no format attribute '" + std::string(kFormatName) + "')");
  }
  const auto version = read_number_attr<int64_t>(file, "format_version");
  if (version > kCheckpointFormatVersion || version < 1) {
    throw Hdf5Failure("format version " + std::to_string(version) + " is not supported (this build reads up to " +
                      std::to_string(kCheckpointFormatVersion) + ")");
  }
  s.step = read_number_attr<int64_t>(file, "step");
  s.epoch = read_number_attr<int64_t>(file, "epoch");
  s.sampler_position = read_number_attr<int64_t>(file, "sampler_position");
  if (H5Aexists(file, "task_sampler") > 0) s.task_sampler = read_string_attr(file, "task_sampler");
  s.world_size = read_number_attr<int64_t>(file, "world_size");
  s.lr = read_number_attr<double>(file, "lr");
  s.schedule = read_string_attr(file, "schedule");
  s.optimizer = read_string_attr(file, "optimizer");
  s.backbone.name = read_string_attr(file, "backbone_name");
  s.backbone.weights_sha256 = read_string_attr(file, "backbone_sha256");
  s.backbone.tensors_hash = read_string_attr(file, "backbone_tensors_hash");
  Id meta(check(H5Gopen2(file, "meta", H5P_DEFAULT), "group /meta"), H5Gclose);
  s.config_ini = read_text(meta, "config");
  s.backbone.config = read_text(meta, "backbone_config");
  s.method = read_text(meta, "method");
}

Id open_file(const std::string& path) {
  if (!fs::is_regular_file(path)) throw_usage_error("checkpoint '" + path + "' does not exist or is not a file");
  Id fapl = file_access();
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl);
  if (f < 0) {
    throw Hdf5Failure("cannot open it as HDF5 (truncated or not an HDF5 file: " + hdf5_error_text() + ")");
  }
  return Id(f, H5Fclose);
}

[[noreturn]] void corrupted(const std::string& path, const std::string& what) {
  DT_FAIL("checkpoint " + path + " is corrupted: " + what,
          "resume from an older checkpoint (--resume auto falls back by itself)");
}

}  // namespace

// ---- files -------------------------------------------------------------------------------------

std::string checkpoint_file_name(int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "ckpt-%08lld.h5", static_cast<long long>(step));
  return name;
}

namespace {

// fsync of a file or directory by path; false on failure.
bool fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

int64_t step_of_file(const std::string& name) {
  static const std::regex pattern(R"(ckpt-(\d+)\.h5)");
  std::smatch m;
  if (!std::regex_match(name, m, pattern)) return -1;
  // A step too large for int64 is not a name we write (a stray or hand-made file): not a checkpoint, so
  // --resume auto goes on to the valid ones instead of failing on it.
  int64_t step = 0;
  const std::string digits = m[1].str();
  const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (err != std::errc() || end != digits.data() + digits.size()) return -1;
  return step;
}

}  // namespace

void replace_file_atomically(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string final_path = dir + "/" + name, tmp = final_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      DT_FAIL("cannot write " + tmp + " (disk full?)");
    }
  }
  if (!fsync_path(tmp, false) || std::rename(tmp.c_str(), final_path.c_str()) != 0) {
    std::remove(tmp.c_str());
    DT_FAIL("cannot write " + final_path + ": " + std::strerror(errno));
  }
  fsync_path(dir, true);
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const int64_t step = step_of_file(name);
    if (step >= 0 && entry.is_regular_file(ec)) found.emplace_back(step, (fs::path(dir) / name).string());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> paths;
  for (auto& f : found) paths.push_back(std::move(f.second));
  return paths;
}

std::string write_checkpoint(const std::string& dir, const CheckpointState& state, int64_t keep) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir)) throw_usage_error("--out: cannot create checkpoint directory '" + dir + "'");
  const std::string name = checkpoint_file_name(state.step);
  const std::string path = (fs::path(dir) / name).string(), tmp = path + ".tmp";
  {
    QuietHdf5 quiet;
    try {
      write_file(tmp, state);
    } catch (const Hdf5Failure& e) {
      std::remove(tmp.c_str());
      DT_FAIL("cannot write checkpoint " + path + ": " + e.what(),
              "is the disk full? the previous checkpoint is intact");
    } catch (...) {
      std::remove(tmp.c_str());
      throw;
    }
  }
  // Durable before visible: the data reaches the disk, then the name, then the pointer.
  if (!fsync_path(tmp, false) || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    DT_FAIL("cannot write checkpoint " + path + ": " + why, "the previous checkpoint is intact");
  }
  fsync_path(dir, true);
  replace_file_atomically(dir, "latest", name + "\n");
  if (keep > 0) {
    const auto all = list_checkpoints(dir);
    for (size_t i = static_cast<size_t>(keep); i < all.size(); ++i) {
      if (all[i] != path) std::remove(all[i].c_str());
    }
  }
  return path;
}

CheckpointState read_checkpoint(const std::string& path) {
  QuietHdf5 quiet;
  CheckpointState s;
  try {
    Id file = open_file(path);
    read_meta(file, s);
    {
      Id g(check(H5Gopen2(file, "trainable", H5P_DEFAULT), "group /trainable"), H5Gclose);
      for (const auto& name : member_names(g)) s.trainables.emplace_back(name, read_tensor(g, name, "/trainable/" + name));
    }
    {
      Id g(check(H5Gopen2(file, "optimizer", H5P_DEFAULT), "group /optimizer"), H5Gclose);
      for (const auto& name : member_names(g)) {
        s.optimizer_state.emplace_back(name, read_tensor(g, name, "/optimizer/" + name));
      }
    }
    {
      Id g(check(H5Gopen2(file, "indices", H5P_DEFAULT), "group /indices"), H5Gclose);
      for (const auto& name : member_names(g)) {
        Id d(check(H5Dopen2(g, name.c_str(), H5P_DEFAULT), "dataset /indices/" + name), H5Dclose);
        SparseIndex ix;
        ix.name = name;
        ix.encoding = read_string_attr(d, "encoding");
        ix.count = read_number_attr<int64_t>(d, "count");
        ix.numel = read_number_attr<int64_t>(d, "numel");
        ix.bytes = read_bytes(d, "/indices/" + name);
        s.indices.push_back(std::move(ix));
      }
    }
    {
      Id g(check(H5Gopen2(file, "rng", H5P_DEFAULT), "group /rng"), H5Gclose);
      for (int64_t r = 0; r < s.world_size; ++r) {
        const std::string name = "rank" + std::to_string(r);
        Id d(check(H5Dopen2(g, name.c_str(), H5P_DEFAULT), "dataset /rng/" + name), H5Dclose);
        s.rng_states.push_back(read_bytes(d, "/rng/" + name));
      }
    }
  } catch (const Hdf5Failure& e) {
    corrupted(path, e.what());
  }
  return s;
}

CheckpointInfo inspect_checkpoint(const std::string& path) {
  QuietHdf5 quiet;
  CheckpointInfo info;
  info.file_bytes = static_cast<int64_t>(fs::file_size(path));
  try {
    Id file = open_file(path);
    read_meta(file, info.meta);
    for (const char* group : {"trainable", "optimizer", "indices", "rng", "meta"}) {
      Id g(check(H5Gopen2(file, group, H5P_DEFAULT), std::string("group /") + group), H5Gclose);
      for (const auto& name : member_names(g)) {
        Id d(check(H5Dopen2(g, name.c_str(), H5P_DEFAULT), "dataset " + name), H5Dclose);
        DatasetInfo di;
        di.group = group;
        di.name = name;
        Id ftype(check(H5Dget_type(d), "type"), H5Tclose);
        const bool text = H5Tget_class(ftype) == H5T_STRING;
        di.dtype = text ? "string" : read_string_attr(d, "dtype");
        int64_t numel = 1;
        for (auto dim : dataset_dims(d)) numel *= static_cast<int64_t>(dim);
        di.shape = H5Aexists(d, "shape") > 0 ? parse_shape(read_string_attr(d, "shape"), name)
                                             : std::vector<int64_t>{numel};
        di.raw_bytes = numel * static_cast<int64_t>(H5Tget_size(ftype));
        di.stored_bytes = static_cast<int64_t>(H5Dget_storage_size(d));
        hsize_t nchunks = 0;
        Id space(check(H5Dget_space(d), "dataspace"), H5Sclose);
        if (numel > 0 && H5Dget_num_chunks(d, space, &nchunks) >= 0) {
          for (hsize_t i = 0; i < nchunks; ++i) {
            unsigned mask = 0;
            haddr_t addr = 0;
            hsize_t size = 0;
            if (H5Dget_chunk_info(d, space, i, nullptr, &mask, &addr, &size) >= 0) {
              di.chunks.emplace_back(static_cast<int64_t>(addr), static_cast<int64_t>(size));
            }
          }
        }
        if (!std::strcmp(group, "indices")) {
          SparseIndex ix;
          ix.name = name;
          ix.encoding = read_string_attr(d, "encoding");
          ix.count = read_number_attr<int64_t>(d, "count");
          ix.numel = read_number_attr<int64_t>(d, "numel");
          info.meta.indices.push_back(ix);
        }
        info.datasets.push_back(std::move(di));
      }
    }
  } catch (const Hdf5Failure& e) {
    corrupted(path, e.what());
  }
  return info;
}

// ---- validation --------------------------------------------------------------------------------

namespace {

std::string describe_tensor(const at::Tensor& t) {
  return shape_text(t.sizes()) + " " + dtype_name(t.scalar_type());
}

}  // namespace

void validate_against(const CheckpointState& saved, const CheckpointState& expected, const std::string& path) {
  auto refuse = [&](const std::string& what) {
    throw_usage_error("checkpoint " + path + " does not match this run: " + what);
  };
  auto differs = [](const std::string& a, const std::string& b) { return !a.empty() && !b.empty() && a != b; };
  const auto& sb = saved.backbone;
  const auto& eb = expected.backbone;
  if (sb.name != eb.name) refuse("backbone '" + sb.name + "' in the checkpoint, '" + eb.name + "' in this run");
  if (differs(sb.config, eb.config)) refuse("backbone config of '" + sb.name + "' differs");
  if (differs(sb.weights_sha256, eb.weights_sha256)) {
    refuse("backbone weights sha256 " + sb.weights_sha256 + " in the checkpoint, " + eb.weights_sha256 + " in this run");
  }
  if (differs(sb.tensors_hash, eb.tensors_hash)) {
    refuse("frozen backbone tensors hash " + sb.tensors_hash + " in the checkpoint, " + eb.tensors_hash +
           " in this run (other weights or another seed)");
  }
  if (saved.method != expected.method) {
    refuse("method '" + saved.method + "' in the checkpoint, '" + expected.method + "' in this run");
  }
  if (differs(saved.optimizer, expected.optimizer)) {
    refuse("optimizer '" + saved.optimizer + "' in the checkpoint, '" + expected.optimizer + "' in this run");
  }
  std::map<std::string, const at::Tensor*> saved_tensors;
  for (const auto& [name, t] : saved.trainables) saved_tensors[name] = &t;
  for (const auto& [name, t] : expected.trainables) {
    auto it = saved_tensors.find(name);
    if (it == saved_tensors.end()) refuse("trainable tensor '" + name + "' is not in the checkpoint");
    if (!it->second->sizes().equals(t.sizes()) || it->second->scalar_type() != t.scalar_type()) {
      refuse("trainable tensor '" + name + "' is " + describe_tensor(*it->second) + " in the checkpoint, " +
             describe_tensor(t) + " in this run");
    }
    saved_tensors.erase(it);
  }
  if (!saved_tensors.empty()) {
    refuse("the checkpoint has trainable tensor '" + saved_tensors.begin()->first + "' that this run does not");
  }
  // The mask: compared when this run has one (a run may instead take it from the checkpoint).
  if (!expected.indices.empty()) {
    std::map<std::string, const SparseIndex*> saved_indices;
    for (const auto& ix : saved.indices) saved_indices[ix.name] = &ix;
    for (const auto& ix : expected.indices) {
      auto it = saved_indices.find(ix.name);
      if (it == saved_indices.end()) refuse("no indices (mask) for '" + ix.name + "' in the checkpoint");
      const SparseIndex& s = *it->second;
      if (s.count != ix.count || s.numel != ix.numel) {
        refuse("mask of '" + ix.name + "' keeps " + std::to_string(s.count) + " of " + std::to_string(s.numel) +
               " in the checkpoint, " + std::to_string(ix.count) + " of " + std::to_string(ix.numel) + " in this run");
      }
      if (s.encoding != ix.encoding || s.bytes != ix.bytes) {
        refuse("mask of '" + ix.name + "' selects other entries in the checkpoint than in this run (mask hash " +
               sha256_hex(s.bytes.data(), s.bytes.size()).substr(0, 16) + " vs " +
               sha256_hex(ix.bytes.data(), ix.bytes.size()).substr(0, 16) + ")");
      }
    }
  }
}

std::vector<std::string> config_differences(const std::string& saved_ini, const std::string& current_ini) {
  auto parse = [](const std::string& ini) {
    std::map<std::string, std::string> kv;
    std::istringstream in(ini);
    std::string line, section;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      if (line.front() == '[' && line.back() == ']') {
        section = line.substr(1, line.size() - 2);
        continue;
      }
      const auto eq = line.find(" = ");
      if (eq == std::string::npos) continue;
      kv[(section.empty() ? "" : section + ".") + line.substr(0, eq)] = line.substr(eq + 3);
    }
    return kv;
  };
  auto ignored = [](const std::string& key) {
    // train.steps: resuming with a larger step count is how a run is extended (as HF Trainer's max_steps).
    return key == "out" || key == "resume" || key == "metrics" || key == "threads" || key == "log-all-ranks" ||
           key == "train.steps" || key.rfind("ckpt.", 0) == 0;
  };
  const auto a = parse(saved_ini), b = parse(current_ini);
  std::vector<std::string> diffs;
  for (const auto& [key, value] : a) {
    if (ignored(key)) continue;
    auto it = b.find(key);
    const std::string now = it == b.end() ? "(unset)" : it->second;
    if (now != value) diffs.push_back(key + ": " + value + " -> " + now);
  }
  for (const auto& [key, value] : b) {
    if (!ignored(key) && !a.count(key)) diffs.push_back(key + ": (unset) -> " + value);
  }
  return diffs;
}

std::optional<ResumePoint> find_resume(const std::string& dir) {
  const auto files = list_checkpoints(dir);
  if (files.empty()) return std::nullopt;
  std::string latest;
  {
    std::ifstream in(dir + "/latest");
    std::getline(in, latest);
  }
  std::string reasons;
  for (const auto& path : files) {
    try {
      ResumePoint point{path, read_checkpoint(path)};
      const std::string name = fs::path(path).filename().string();
      if (!latest.empty() && latest != name && step_of_file(name) > step_of_file(latest)) {
        log::info("resume: 'latest' names {} but {} is newer and complete; using it", latest, name);
      }
      return point;
    } catch (const Error& e) {
      log::info("resume: skipping {}: {}", path, e.what());
      reasons += "\n  " + std::string(e.what());
    }
  }
  throw_usage_error("no usable checkpoint in '" + dir + "' (every one failed to verify):" + reasons);
}

}  // namespace dt::dist
