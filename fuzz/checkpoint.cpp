// fuzz/checkpoint.cpp — the HDF5 checkpoint reader (--resume, inspect, export): attributes, shape
// attributes, dataset types and sizes, encoded indices, RNG state bytes.
//
// Design note: HDF5's own parser of raw bytes is the library's business (and the 1.10 format checksums
// its metadata, so a flipped byte is a checksum error); what is ours is how we read a well-formed HDF5
// file whose contents lie. So each input is a list of edits to a valid checkpoint written by
// write_checkpoint, made with the HDF5 API: an attribute deleted or rewritten with another type or value,
// a dataset replaced by one of another type and shape, an object removed or added. The edited file must
// read, or fail with a dt::Error naming it; what reads is then used as resume uses it (indices decoded,
// RNG state restored).
#include <fuzzer/FuzzedDataProvider.h>
#include <hdf5.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <string>
#include <vector>

#include "dist/checkpoint.h"
#include "fuzz/fuzz_util.h"
#include "sparse/index_codec.h"

namespace {

const char* const kObjects[] = {"/", "/trainable/w", "/trainable/h", "/optimizer/w.exp_avg", "/indices/w",
                                "/rng/rank0", "/meta/config", "/meta/backbone_config", "/meta/method",
                                "/trainable", "/optimizer", "/indices", "/rng", "/meta"};
const char* const kAttributes[] = {"format", "format_version", "step", "epoch", "sampler_position", "world_size",
                                   "lr", "schedule", "optimizer", "backbone_name", "backbone_sha256",
                                   "backbone_tensors_hash", "dtype", "shape", "encoding", "count", "numel"};

// A valid checkpoint with one of each kind of content; written once per process.
std::string template_checkpoint() {
  const std::string dir = dt::fuzz::scratch_path("template");
  std::filesystem::create_directories(dir);
  dt::dist::CheckpointState s;
  s.step = 3, s.epoch = 1, s.sampler_position = 96, s.world_size = 1, s.lr = 1e-3;
  s.schedule = "linear base_lr=0.001 warmup=0 total=10", s.optimizer = "adamw";
  s.trainables = {{"w", at::arange(12, at::kFloat).reshape({3, 4})}, {"h", at::ones({5}, at::kBFloat16)}};
  s.optimizer_state = {{"w.exp_avg", at::zeros({3, 4})}};
  const std::vector<int64_t> kept = {1, 5, 7};
  s.indices = {{"w", "deltatune-index-v1", dt::sparse::encode_indices(kept, 12), 3, 12}};
  s.rng_states = {dt::dist::capture_rng_state()};
  s.config_ini = "method = fish\n[train]\nlr = 0.001\n", s.method = "fish keep=3";
  s.backbone = {"tiny-llama", "{}", "", ""};
  return dt::dist::write_checkpoint(dir, s, 1);
}

void write_attribute(hid_t object, const char* name, FuzzedDataProvider& in) {
  if (H5Aexists(object, name) > 0) H5Adelete(object, name);
  const int kind = in.ConsumeIntegralInRange(0, 3);
  hid_t space = -1, type = -1;
  std::string text;
  int64_t numbers[2] = {0, 0};
  double real = 0;
  if (kind == 0) {
    text = in.ConsumeRandomLengthString(64);
    space = H5Screate(H5S_SCALAR);
    type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, std::max<size_t>(text.size(), 1));
  } else if (kind == 1 || kind == 3) {
    numbers[0] = in.ConsumeIntegral<int64_t>(), numbers[1] = in.ConsumeIntegral<int64_t>();
    const hsize_t two = 2;
    space = kind == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &two, nullptr);
    type = H5Tcopy(H5T_STD_I64LE);
  } else {
    real = in.ConsumeFloatingPoint<double>();
    space = H5Screate(H5S_SCALAR);
    type = H5Tcopy(H5T_IEEE_F64LE);
  }
  const hid_t attribute = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  if (attribute >= 0) {
    const void* value = kind == 0 ? static_cast<const void*>(text.c_str())
                                  : kind == 2 ? static_cast<const void*>(&real) : static_cast<const void*>(numbers);
    H5Awrite(attribute, type, value);
    H5Aclose(attribute);
  }
  H5Tclose(type);
  H5Sclose(space);
}

// Replaces (or adds) dataset `path` with one of a fuzzed type and shape, filled from the input.
void write_dataset(hid_t file, const std::string& path, FuzzedDataProvider& in) {
  if (H5Lexists(file, path.c_str(), H5P_DEFAULT) > 0) H5Ldelete(file, path.c_str(), H5P_DEFAULT);
  const hid_t types[] = {H5T_STD_U8LE, H5T_STD_U16LE, H5T_STD_I64LE, H5T_IEEE_F32LE, H5T_IEEE_F64LE};
  const hid_t type = types[in.ConsumeIntegralInRange<size_t>(0, 4)];
  const int rank = in.ConsumeIntegralInRange(0, 2);
  hsize_t dims[2] = {in.ConsumeIntegralInRange<hsize_t>(0, 8), in.ConsumeIntegralInRange<hsize_t>(0, 8)};
  const hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, nullptr);
  const hid_t dataset = H5Dcreate2(file, path.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (dataset >= 0) {
    const hssize_t elements = H5Sget_simple_extent_npoints(space);
    std::vector<uint8_t> bytes = in.ConsumeBytes<uint8_t>(static_cast<size_t>(elements) * H5Tget_size(type));
    bytes.resize(static_cast<size_t>(elements) * H5Tget_size(type));
    if (!bytes.empty()) H5Dwrite(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data());
    H5Dclose(dataset);
  }
  H5Sclose(space);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string original = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // the reader reports errors itself
    return template_checkpoint();
  }();
  static const std::string path = dt::fuzz::scratch_path("ckpt-00000003.h5");
  std::filesystem::copy_file(original, path, std::filesystem::copy_options::overwrite_existing);

  FuzzedDataProvider in(data, size);
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) std::abort();
  for (int edit = 0; edit < 8 && in.remaining_bytes() > 0; ++edit) {
    const std::string object = in.PickValueInArray(kObjects);
    switch (in.ConsumeIntegralInRange(0, 3)) {
      case 0: {  // an attribute rewritten (or removed)
        const hid_t o = H5Oopen(file, object.c_str(), H5P_DEFAULT);
        if (o < 0) break;
        const char* name = in.PickValueInArray(kAttributes);
        if (in.ConsumeBool()) {
          if (H5Aexists(o, name) > 0) H5Adelete(o, name);
        } else {
          write_attribute(o, name, in);
        }
        H5Oclose(o);
        break;
      }
      case 1:  // a dataset of another type and shape in its place
        if (object != "/") write_dataset(file, object, in);
        break;
      case 2:  // an object removed
        if (object != "/" && H5Lexists(file, object.c_str(), H5P_DEFAULT) > 0) {
          H5Ldelete(file, object.c_str(), H5P_DEFAULT);
        }
        break;
      case 3: {  // a stray dataset added to a group
        const char* groups[] = {"/trainable/", "/optimizer/", "/indices/", "/rng/"};
        write_dataset(file, in.PickValueInArray(groups) + in.ConsumeRandomLengthString(12), in);
        break;
      }
    }
  }
  H5Fclose(file);

  dt::fuzz::expect_clean_error(path, [&] { (void)dt::dist::inspect_checkpoint(path); });
  dt::dist::CheckpointState state;
  bool read = false;
  dt::fuzz::expect_clean_error(path, [&] {
    state = dt::dist::read_checkpoint(path);
    read = true;
  });
  if (!read) return 0;
  for (const auto& index : state.indices) {
    dt::fuzz::expect_clean_error("", [&] { (void)dt::sparse::decode_indices(index.bytes.data(), index.bytes.size()); });
  }
  dt::fuzz::expect_clean_error("", [&] {
    if (!state.rng_states.empty()) dt::dist::restore_rng_state(state.rng_states[0]);
  });
  return 0;
}
