// tests/dist/test_checkpoint.cpp — HDF5 checkpoints: exact round trip of every dtype, atomic writes and
// keep-K, a full disk mid-write (RLIMIT_FSIZE in a forked child), truncation and flipped bytes anywhere
// (always an error, never a wrong value), find_resume's fallback, mismatch messages, sha256 vectors,
// and a bitwise resume of an AdamW + sampler + dropout loop.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <hdf5.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <chrono>

#include "dist/checkpoint.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace dt::dist {
namespace {

std::string temp_dir(const std::string& tag) {
  std::string pattern = (fs::temp_directory_path() / ("dt-ckpt-" + tag + "-XXXXXX")).string();
  const char* made = mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  return pattern;
}

// A fake state with every dtype a method or optimizer produces.
CheckpointState fake_state(int64_t step, uint64_t seed = 1) {
  at::manual_seed(seed);
  CheckpointState s;
  s.step = step;
  s.epoch = 2;
  s.sampler_position = 96;
  s.world_size = 2;
  s.lr = 3.25e-4;
  s.schedule = "linear base_lr=0.001 warmup=10 total=200";
  s.optimizer = "adamw";
  s.trainables = {{"model.layers.0.self_attn.q_proj.lora_A.weight", at::randn({8, 64})},
                  {"model.layers.0.self_attn.q_proj.lora_B.weight", at::randn({64, 8}).to(at::kBFloat16)},
                  {"classifier.bias", at::randn({3}).to(at::kHalf)},
                  {"fish.values", at::randn({1000}, at::kDouble)},
                  {"empty", at::empty({0, 4})}};
  for (const auto& [name, t] : s.trainables) {
    s.optimizer_state.emplace_back(name + ".step", at::full({}, step, at::kLong));
    s.optimizer_state.emplace_back(name + ".exp_avg", at::randn(t.sizes()).to(t.scalar_type()));
    s.optimizer_state.emplace_back(name + ".exp_avg_sq", at::rand(t.sizes()).to(t.scalar_type()));
  }
  SparseIndex ix;
  ix.name = "fish.values";
  ix.encoding = "deltatune-index-v1";
  ix.count = 1000;
  ix.numel = 200000;
  for (int i = 0; i < 2018; ++i) ix.bytes.push_back(static_cast<uint8_t>(i * 37 + seed));
  s.indices.push_back(ix);
  s.rng_states = {std::vector<uint8_t>(5056, 7), std::vector<uint8_t>(5056, 9)};
  s.config_ini = "method = lora\n\n[train]\nlr = 0.001\nsteps = 200\n";
  s.method = "lora(r=8,alpha=16,targets=q,v)";
  s.backbone = {"stories260K", "{\"dim\":64}", std::string(64, 'a'), "0123456789abcdef"};
  return s;
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  // An empty tensor may have no storage (a null data pointer, which memcmp must not get even for 0 bytes).
  return x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

bool same_tensors(const NamedTensors& a, const NamedTensors& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].first != b[i].first || !same_bytes(a[i].second, b[i].second)) return false;
  }
  return true;
}

bool same_state(const CheckpointState& a, const CheckpointState& b) {
  bool ok = a.step == b.step && a.epoch == b.epoch && a.sampler_position == b.sampler_position &&
            a.world_size == b.world_size && a.lr == b.lr && a.schedule == b.schedule && a.optimizer == b.optimizer &&
            a.config_ini == b.config_ini && a.method == b.method && a.backbone.name == b.backbone.name &&
            a.backbone.config == b.backbone.config && a.backbone.weights_sha256 == b.backbone.weights_sha256 &&
            a.backbone.tensors_hash == b.backbone.tensors_hash && a.rng_states == b.rng_states &&
            same_tensors(a.trainables, b.trainables) && same_tensors(a.optimizer_state, b.optimizer_state) &&
            a.indices.size() == b.indices.size();
  for (size_t i = 0; ok && i < a.indices.size(); ++i) {
    ok = a.indices[i].name == b.indices[i].name && a.indices[i].encoding == b.indices[i].encoding &&
         a.indices[i].bytes == b.indices[i].bytes && a.indices[i].count == b.indices[i].count &&
         a.indices[i].numel == b.indices[i].numel;
  }
  return ok;
}

std::vector<char> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}
void write_all(const std::string& path, const std::vector<char>& bytes, size_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(n));
}
std::string read_text(const std::string& path) {
  const auto b = read_all(path);
  return std::string(b.begin(), b.end());
}

TEST(Checkpoint, RoundTripIsExactForEveryDtype) {
  const std::string dir = temp_dir("roundtrip");
  const CheckpointState s = fake_state(12);
  const std::string path = write_checkpoint(dir, s, 3);
  EXPECT_EQ(path, dir + "/ckpt-00000012.h5");
  const CheckpointState r = read_checkpoint(path);
  EXPECT_TRUE(same_state(s, r));
  // dtypes are kept, not converted: bf16 stays bf16, 0-d stays 0-d.
  EXPECT_EQ(r.trainables[1].second.scalar_type(), at::kBFloat16);
  EXPECT_EQ(r.trainables[2].second.scalar_type(), at::kHalf);
  EXPECT_EQ(r.optimizer_state[0].second.dim(), 0);
  EXPECT_EQ(r.optimizer_state[0].second.item<int64_t>(), 12);
  fs::remove_all(dir);
}

TEST(Checkpoint, InspectReportsBytesAndNeverTheBackbone) {
  const std::string dir = temp_dir("inspect");
  const CheckpointState s = fake_state(3);
  const std::string path = write_checkpoint(dir, s, 0);
  const CheckpointInfo info = inspect_checkpoint(path);
  EXPECT_EQ(info.file_bytes, static_cast<int64_t>(fs::file_size(path)));
  EXPECT_EQ(info.meta.step, 3);
  EXPECT_EQ(info.meta.method, s.method);
  int64_t values = 0, raw = 0;
  for (const auto& d : info.datasets) {
    if (d.group == "trainable") values += d.raw_bytes;
    raw += d.raw_bytes;
  }
  int64_t expected_values = 0;
  for (const auto& [n, t] : s.trainables) expected_values += t.nbytes();
  EXPECT_EQ(values, expected_values);
  // Only what was learned (and small metadata) is in the file.
  EXPECT_LT(info.file_bytes, raw + 64 * 1024);
  ASSERT_EQ(info.meta.indices.size(), 1u);
  EXPECT_EQ(info.meta.indices[0].count, 1000);
  fs::remove_all(dir);
}

TEST(Checkpoint, AtomicWriteKeepsTheNewestKAndPointsLatestAtTheNewest) {
  const std::string dir = temp_dir("keep");
  for (int64_t step = 10; step <= 50; step += 10) write_checkpoint(dir, fake_state(step), 2);
  const auto files = list_checkpoints(dir);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0], dir + "/ckpt-00000050.h5");
  EXPECT_EQ(files[1], dir + "/ckpt-00000040.h5");
  EXPECT_EQ(read_text(dir + "/latest"), "ckpt-00000050.h5\n");
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().extension(), e.path().filename() == "latest" ? "" : ".h5") << e.path();
  }
  // keep <= 0 keeps all
  write_checkpoint(dir, fake_state(60), 0);
  EXPECT_EQ(list_checkpoints(dir).size(), 3u);
  fs::remove_all(dir);
}

// A child process with a file-size limit (SIGXFSZ ignored: writes fail with EFBIG) writes a checkpoint.
// Exit 0: it threw a dt::Error and removed its temporary file.
int write_with_size_limit(const std::string& dir, const CheckpointState& s, rlim_t limit) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit rl{limit, limit};
    setrlimit(RLIMIT_FSIZE, &rl);
    int code = 3;
    try {
      write_checkpoint(dir, s, 1);
      code = 1;
    } catch (const Error& e) {
      code = fs::exists(dir + "/" + checkpoint_file_name(s.step) + ".tmp") ? 2 : 0;
      if (std::strstr(e.what(), "previous checkpoint is intact") == nullptr) code = 4;
    } catch (...) {
    }
    _exit(code);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

TEST(Checkpoint, DiskFullMidWriteNeverHarmsThePreviousCheckpoint) {
  const std::string dir = temp_dir("full");
  const CheckpointState old = fake_state(5);
  const std::string old_path = write_checkpoint(dir, old, 1);
  CheckpointState next = fake_state(6, 2);
  next.trainables.emplace_back("big", at::randn({256, 1024}));  // 1 MiB: several chunks
  const auto size = static_cast<rlim_t>(fs::file_size(old_path));
  for (rlim_t limit : {rlim_t{512}, rlim_t{4096}, size / 2, size, size * 2, size * 4}) {
    EXPECT_EQ(write_with_size_limit(dir, next, limit), 0) << "limit " << limit;
    EXPECT_EQ(read_text(dir + "/latest"), "ckpt-00000005.h5\n");
    EXPECT_FALSE(fs::exists(dir + "/ckpt-00000006.h5"));
    EXPECT_TRUE(same_state(read_checkpoint(old_path), old));
    auto point = find_resume(dir);
    ASSERT_TRUE(point.has_value());
    EXPECT_EQ(point->path, old_path);
  }
  fs::remove_all(dir);
}

TEST(Checkpoint, TruncatedFilesAreRefused) {
  const std::string dir = temp_dir("trunc");
  const std::string path = write_checkpoint(dir, fake_state(7), 0);
  const auto bytes = read_all(path);
  const std::string cut = dir + "/cut.h5";
  std::mt19937_64 rng(7);
  std::vector<size_t> offsets = {0, 1, 8, 100, 512, bytes.size() / 2, bytes.size() - 1};
  for (int i = 0; i < 60; ++i) offsets.push_back(rng() % bytes.size());
  for (size_t n : offsets) {
    write_all(cut, bytes, n);
    EXPECT_THROW(read_checkpoint(cut), Error) << "truncated at " << n << " of " << bytes.size();
  }
  fs::remove_all(dir);
}

// A flipped byte anywhere: read_checkpoint throws or returns exactly what was written (a flip in
// bytes HDF5 never reads). In any dataset's stored chunks, it always throws, naming the checksum.
TEST(Checkpoint, FlippedBytesAreAlwaysDetected) {
  const std::string dir = temp_dir("flip");
  const CheckpointState s = fake_state(8);
  const std::string path = write_checkpoint(dir, s, 0);
  const auto bytes = read_all(path);
  const std::string bad = dir + "/bad.h5";
  std::mt19937_64 rng(8);
  auto flip_at = [&](size_t offset) {
    auto copy = bytes;
    copy[offset] = static_cast<char>(copy[offset] ^ static_cast<char>(1 + rng() % 255));
    write_all(bad, copy, copy.size());
  };
  int detected = 0, harmless = 0;
  for (int i = 0; i < 300; ++i) {
    flip_at(rng() % bytes.size());
    try {
      EXPECT_TRUE(same_state(read_checkpoint(bad), s)) << "a flipped byte returned wrong values";
      ++harmless;
    } catch (const Error&) {
      ++detected;
    }
  }
  EXPECT_GT(detected, 250);
  std::vector<std::pair<int64_t, int64_t>> chunks;
  for (const auto& d : inspect_checkpoint(path).datasets) chunks.insert(chunks.end(), d.chunks.begin(), d.chunks.end());
  ASSERT_GE(chunks.size(), 20u);
  int in_data = 0;
  for (const auto& [offset, size] : chunks) {
    for (int k = 0; k < 3; ++k) {
      flip_at(static_cast<size_t>(offset) + rng() % static_cast<size_t>(size));
      try {
        read_checkpoint(bad);
        ADD_FAILURE() << "flip in the chunk at " << offset << " was not detected";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("failed its checksum"), std::string::npos) << e.what();
        ++in_data;
      }
    }
  }
  std::printf("flips: %d of 300 anywhere detected (%d harmless, values identical); %d of %d in data chunks\n",
              detected, harmless, in_data, static_cast<int>(chunks.size() * 3));
  fs::remove_all(dir);
}

// What HDF5 parses of a checkpoint before reading any data — links and attributes — lives in object
// headers, which the 1.10 format checksums, never in the unchecksummed dense storage (fractal heaps):
// a flipped byte there reached HDF5's parser unchecked and crashed it under ASan.
herr_t visit_object(hid_t obj, const char* name, const H5O_info_t* info, void* out) {
  auto& problems = *static_cast<std::vector<std::string>*>(out);
  if (info->meta_size.attr.heap_size != 0 || info->meta_size.attr.index_size != 0) {
    problems.push_back(std::string(name) + ": attributes in dense storage");
  }
  if (info->type == H5O_TYPE_GROUP) {
    H5G_info_t g;
    const hid_t group = H5Gopen2(obj, name, H5P_DEFAULT);
    if (group < 0 || H5Gget_info(group, &g) < 0) problems.push_back(std::string(name) + ": unreadable group");
    else if (g.storage_type != H5G_STORAGE_TYPE_COMPACT) problems.push_back(std::string(name) + ": links in dense storage");
    if (group >= 0) H5Gclose(group);
  }
  return 0;
}

TEST(Checkpoint, MetadataLivesInChecksummedHeaders) {
  const std::string dir = temp_dir("compact");
  CheckpointState state = fake_state(40);
  for (int i = 0; i < 40; ++i) state.trainables.emplace_back("extra." + std::to_string(i), at::randn({4}));  // > 8
  const std::string path = write_checkpoint(dir, state, 0);
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  std::vector<std::string> problems;
  ASSERT_GE(H5Ovisit2(file, H5_INDEX_NAME, H5_ITER_INC, visit_object, &problems, H5O_INFO_ALL), 0);
  H5Fclose(file);
  EXPECT_TRUE(problems.empty()) << ::testing::PrintToString(problems);
  EXPECT_TRUE(same_state(read_checkpoint(path), state));  // creation order still kept
  fs::remove_all(dir);
}

void flip_data_byte(const std::string& path) {
  const auto chunks = inspect_checkpoint(path).datasets.front().chunks;
  auto bytes = read_all(path);
  bytes[chunks.front().first + chunks.front().second / 2] ^= 0x5a;
  write_all(path, bytes, bytes.size());
}

TEST(Checkpoint, FindResumeFallsBackPastCorruptedCheckpoints) {
  const std::string dir = temp_dir("resume");
  EXPECT_FALSE(find_resume(dir).has_value());
  EXPECT_FALSE(find_resume(dir + "/missing").has_value());
  for (int64_t step : {1, 2, 3}) write_checkpoint(dir, fake_state(step), 0);
  EXPECT_EQ(find_resume(dir)->state.step, 3);
  flip_data_byte(dir + "/ckpt-00000003.h5");
  EXPECT_EQ(find_resume(dir)->state.step, 2);
  // A truncated one is skipped too.
  const auto b = read_all(dir + "/ckpt-00000002.h5");
  write_all(dir + "/ckpt-00000002.h5", b, b.size() / 2);
  EXPECT_EQ(find_resume(dir)->path, dir + "/ckpt-00000001.h5");
  flip_data_byte(dir + "/ckpt-00000001.h5");
  try {
    find_resume(dir);
    ADD_FAILURE() << "no usable checkpoint must be an error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("no usable checkpoint"), std::string::npos);
  }
  // A crash between the rename and the pointer update: the newer complete file wins.
  const std::string dir2 = temp_dir("resume2");
  write_checkpoint(dir2, fake_state(4), 0);
  write_checkpoint(dir2, fake_state(5), 0);
  std::ofstream(dir2 + "/latest") << "ckpt-00000004.h5\n";
  EXPECT_EQ(find_resume(dir2)->state.step, 5);
  // A stray file whose step overflows int64 is not a checkpoint: before, --resume auto died on it with
  // the one word "stoll" (std::out_of_range).
  std::ofstream(dir2 + "/ckpt-99999999999999999999999.h5") << "not a checkpoint";
  EXPECT_EQ(list_checkpoints(dir2).size(), 2u);
  EXPECT_EQ(find_resume(dir2)->state.step, 5);
  fs::remove_all(dir);
  fs::remove_all(dir2);
}

// Rewrites one string attribute of a dataset in place (as a corrupted or hand-made file could hold it).
void forge_string_attr(const std::string& path, const std::string& dataset, const char* attr, const std::string& value) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const hid_t dset = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
  ASSERT_GE(dset, 0);
  ASSERT_GE(H5Adelete(dset, attr), 0);
  const hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, value.size());
  H5Tset_strpad(type, H5T_STR_NULLPAD);  // as the writer stores strings
  H5Tset_cset(type, H5T_CSET_UTF8);
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t a = H5Acreate2(dset, attr, type, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(a, 0);
  ASSERT_GE(H5Awrite(a, type, value.data()), 0);
  H5Aclose(a), H5Sclose(space), H5Tclose(type), H5Dclose(dset), H5Fclose(file);
}

// Shape attributes are untrusted: a product past int64 or a negative size is refused by name, never
// multiplied into a wrong (wrapped) element count.
TEST(Checkpoint, ForgedShapeAttributesAreRefused) {
  const std::string dir = temp_dir("shape");
  const std::string path = write_checkpoint(dir, fake_state(3), 0);
  const std::string forged = dir + "/forged.h5";
  const std::string tensor = "/trainable/model.layers.0.self_attn.q_proj.lora_A.weight";
  for (const auto& [shape, words] : std::vector<std::pair<std::string, std::string>>{
           {"[4294967296, 4294967296, 8]", "does not fit in 64 bits"},
           {"[9223372036854775807, 2]", "does not fit in 64 bits"},
           {"[-8, -64]", "bad shape attribute"},
           {"[8, 63]", "does not match its shape/dtype attributes"}}) {
    fs::copy_file(path, forged, fs::copy_options::overwrite_existing);
    forge_string_attr(forged, tensor, "shape", shape);
    try {
      read_checkpoint(forged);
      ADD_FAILURE() << "shape " << shape << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << shape << ": " << e.what();
    }
  }
  fs::remove_all(dir);
}

// Attributes the reader takes as one value, stored as arrays (a hand-made or damaged file): H5Aread would
// write every element into the single value (a stack overrun the fuzzer found); each is refused by name.
TEST(Checkpoint, ArrayValuedAttributesAreRefused) {
  const std::string dir = temp_dir("array_attr");
  const std::string path = write_checkpoint(dir, fake_state(3), 0);
  const std::string forged = dir + "/forged.h5";
  for (const char* attr : {"step", "lr", "format"}) {
    fs::copy_file(path, forged, fs::copy_options::overwrite_existing);
    const hid_t file = H5Fopen(forged.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    ASSERT_GE(H5Adelete(file, attr), 0);
    const hsize_t two = 2;
    const hid_t space = H5Screate_simple(1, &two, nullptr);
    const bool text = std::string(attr) == "format";
    const hid_t type = text ? H5Tcopy(H5T_C_S1) : H5Tcopy(H5T_NATIVE_INT64);
    if (text) H5Tset_size(type, 32);
    const hid_t a = H5Acreate2(file, attr, type, space, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(a, 0);
    const char values[64] = "deltatune";
    ASSERT_GE(H5Awrite(a, type, values), 0);
    H5Aclose(a), H5Tclose(type), H5Sclose(space), H5Fclose(file);
    try {
      inspect_checkpoint(forged);
      ADD_FAILURE() << "attribute " << attr << " with 2 values was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("attribute ") + attr + " holds 2 values"), std::string::npos)
          << e.what();
    }
  }
  fs::remove_all(dir);
}

// A short RNG state (a hand-made file) is our error, not torch's c10::Error (found by fuzz/checkpoint.cpp);
// a whole one restores the generator exactly.
TEST(Checkpoint, RngStateOfTheWrongSizeIsRefused) {
  const std::vector<uint8_t> state = capture_rng_state();
  const double before = at::rand({1}).item<double>();
  for (size_t size : {size_t{0}, size_t{1}, state.size() - 1}) {
    try {
      restore_rng_state(std::vector<uint8_t>(state.begin(), state.begin() + size));
      ADD_FAILURE() << "an RNG state of " << size << " bytes was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("RNG state of " + std::to_string(size) + " bytes"), std::string::npos)
          << e.what();
    }
  }
  restore_rng_state(state);
  EXPECT_EQ(at::rand({1}).item<double>(), before);
}

void expect_refused(const CheckpointState& saved, const CheckpointState& expected, const std::string& words) {
  try {
    validate_against(saved, expected, "x.h5");
    ADD_FAILURE() << "expected a mismatch naming: " << words;
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, MismatchesAreRefusedNamingTheDifference) {
  const CheckpointState saved = fake_state(1);
  validate_against(saved, saved, "x.h5");
  CheckpointState e = saved;
  e.backbone.name = "t5-base";
  expect_refused(saved, e, "backbone 'stories260K' in the checkpoint, 't5-base' in this run");
  e = saved, e.backbone.weights_sha256 = std::string(64, 'b');
  expect_refused(saved, e, "backbone weights sha256");
  e.backbone.weights_sha256 = "";  // unknown on one side: not compared
  validate_against(saved, e, "x.h5");
  e = saved, e.backbone.tensors_hash = "fedcba9876543210";
  expect_refused(saved, e, "frozen backbone tensors hash");
  e = saved, e.method = "lora(r=16)";
  expect_refused(saved, e, "method 'lora(r=8,alpha=16,targets=q,v)' in the checkpoint, 'lora(r=16)' in this run");
  e = saved, e.optimizer = "adafactor";
  expect_refused(saved, e, "optimizer 'adamw'");
  e = saved, e.trainables[0].second = at::zeros({16, 64});
  expect_refused(saved, e, "is [8, 64] float32 in the checkpoint, [16, 64] float32 in this run");
  e = saved, e.trainables[1].second = at::zeros({64, 8});
  expect_refused(saved, e, "[64, 8] bfloat16 in the checkpoint, [64, 8] float32 in this run");
  e = saved, e.trainables.emplace_back("new.weight", at::zeros({2}));
  expect_refused(saved, e, "'new.weight' is not in the checkpoint");
  e = saved, e.trainables.pop_back();
  expect_refused(saved, e, "the checkpoint has trainable tensor 'empty' that this run does not");
  e = saved, e.indices[0].bytes[20] ^= 1;
  expect_refused(saved, e, "mask of 'fish.values' selects other entries");
  e = saved, e.indices[0].count = 999;
  expect_refused(saved, e, "keeps 1000 of 200000 in the checkpoint, 999 of 200000 in this run");
}

TEST(Checkpoint, ConfigDifferencesIgnoreWhatMayChangeOnResume) {
  const std::string a =
      "method = lora\nout = /a\nthreads = 2\n\n[ckpt]\nevery = 10\n\n[train]\nlr = 0.001\nsteps = 100\n";
  const std::string b =
      "method = lora\nout = /b\nthreads = 4\n\n[ckpt]\nevery = 20\n\n[train]\nlr = 0.002\nseed = 1\nsteps = 200\n";
  const auto d = config_differences(a, b);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0], "train.lr: 0.001 -> 0.002");
  EXPECT_EQ(d[1], "train.seed: (unset) -> 1");
}

TEST(Checkpoint, Sha256MatchesFipsVectors) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two.data(), two.size()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string dir = temp_dir("sha");
  const std::string million(1000000, 'a');
  std::ofstream(dir + "/a") << million;
  EXPECT_EQ(sha256_file(dir + "/a"), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  fs::remove_all(dir);
}

// The cached digest (what start-up and eval compare the weights by): hashed once, then read from the cache
// while the file is unchanged; an edit in place with the mtime put back, a file replaced by another and a
// torn cache entry are all hashed again. The sleeps step past the 1 s "racy" window, in which nothing is cached.
TEST(Checkpoint, CachedSha256IsRecomputedWhenTheFileChanges) {
  const std::string dir = temp_dir("shacache");
  ASSERT_EQ(setenv("DELTATUNE_CACHE", (dir + "/cache").c_str(), 1), 0);
  const std::string file = dir + "/weights.bin";
  std::ofstream(file) << std::string(100000, 'x');
  const FileDigest racy = sha256_file_cached(file);  // written just now: hashed, not cached
  EXPECT_FALSE(racy.from_cache);
  EXPECT_TRUE(racy.cache_path.empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const FileDigest first = sha256_file_cached(file);
  EXPECT_FALSE(first.from_cache);
  EXPECT_EQ(first.sha256, sha256_file(file));
  ASSERT_TRUE(fs::exists(first.cache_path));
  const FileDigest second = sha256_file_cached(file);
  EXPECT_TRUE(second.from_cache);
  EXPECT_EQ(second.sha256, first.sha256);

  // One byte changed in place, size and mtime put back: only the ctime tells.
  struct stat before {};
  ASSERT_EQ(::stat(file.c_str(), &before), 0);
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(500);
    f.put('y');
  }
  const timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, 0), 0);
  struct stat after {};
  ASSERT_EQ(::stat(file.c_str(), &after), 0);
  ASSERT_EQ(after.st_size, before.st_size);
  ASSERT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  const FileDigest edited = sha256_file_cached(file);
  EXPECT_FALSE(edited.from_cache);
  EXPECT_NE(edited.sha256, first.sha256);
  EXPECT_EQ(edited.sha256, sha256_file(file));

  // Replaced by another file of the same size (a new inode): hashed again.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  std::ofstream(dir + "/other.bin") << std::string(100000, 'z');
  fs::rename(dir + "/other.bin", file);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const FileDigest replaced = sha256_file_cached(file);
  EXPECT_FALSE(replaced.from_cache);
  EXPECT_EQ(replaced.sha256, sha256_file(file));
  EXPECT_TRUE(sha256_file_cached(file).from_cache);

  // A torn entry is ignored and rewritten.
  std::ofstream(replaced.cache_path) << "{ torn";
  const FileDigest torn = sha256_file_cached(file);
  EXPECT_FALSE(torn.from_cache);
  EXPECT_EQ(torn.sha256, replaced.sha256);
  EXPECT_TRUE(sha256_file_cached(file).from_cache);
  unsetenv("DELTATUNE_CACHE");
  fs::remove_all(dir);
}

// The loop's state at a step boundary is everything: save after 3 steps, run 4 more; a fresh set of
// objects restored from the file runs the same 4 steps to the same bits (AdamW, sampler, dropout).
TEST(Checkpoint, ResumeIsBitwiseForOptimizerSamplerAndDropout) {
  const std::string dir = temp_dir("bitwise");
  auto run = [&](int64_t from, int64_t to, const CheckpointState* resume, CheckpointState* save_at_end) {
    at::manual_seed(0);
    at::Tensor w = at::randn({16, 4}).requires_grad_(true);
    NamedTensors params = {{"w", w}};
    auto opt = make_optimizer(params, {});
    DistributedSampler sampler(37, 0, 1, {123});
    const at::Tensor data = at::randn({37, 16});
    if (resume) apply_training_state(*resume, params, *opt, sampler, 0);
    std::vector<double> losses;
    for (int64_t step = from + 1; step <= to; ++step) {
      const auto idx = sampler.next_batch(5);
      at::Tensor x = at::dropout(data.index_select(0, at::tensor(idx, at::kLong)), 0.3, true);
      at::Tensor loss = x.matmul(w).pow(2).mean();
      loss.backward();
      opt->step(1e-2);
      opt->zero_grad();
      losses.push_back(loss.item<double>());
    }
    if (save_at_end) {
      *save_at_end = capture_training_state(to, params, *opt, sampler);
      save_at_end->rng_states = {capture_rng_state()};
      save_at_end->world_size = 1;
      write_checkpoint(dir, *save_at_end, 0);
    }
    return std::make_pair(losses, w.detach().clone());
  };
  const auto whole = run(0, 7, nullptr, nullptr);
  CheckpointState saved;
  run(0, 3, nullptr, &saved);
  const CheckpointState loaded = read_checkpoint(dir + "/" + checkpoint_file_name(3));
  const auto rest = run(3, 7, &loaded, nullptr);
  ASSERT_EQ(rest.first.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(rest.first[i], whole.first[3 + i]) << "step " << 4 + i;
  EXPECT_TRUE(same_bytes(rest.second, whole.second));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dt::dist
