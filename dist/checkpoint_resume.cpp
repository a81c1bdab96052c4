// dist/checkpoint_resume.cpp — the collective side of checkpoints (checkpoint.h): RNG capture, training
// state capture/apply, collective save and resume, preemption flags, and SHA-256 of weights files.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/GradMode.h>
#include <openssl/evp.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "dist/checkpoint.h"
#include "util/error.h"
#include "util/log.h"

namespace fs = std::filesystem;

namespace dt::dist {

// ---- state capture and restore -----------------------------------------------------------------

namespace {

// The default CUDA generator of this rank's current GPU when the process uses one (dropout on the GPU
// draws from it). Asking never creates a CUDA context: a CPU run on a GPU machine stays off the GPU.
std::optional<at::Generator> cuda_generator() {
  const auto& hooks = at::detail::getCUDAHooks();
  if (!hooks.hasCUDA()) return std::nullopt;
  const c10::DeviceIndex d = hooks.current_device();
  if (d < 0 || !hooks.hasPrimaryContext(d)) return std::nullopt;
  return at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, d));
}

std::vector<uint8_t> generator_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  const at::Tensor state = gen.get_state().contiguous();
  const auto* p = state.data_ptr<uint8_t>();
  return std::vector<uint8_t>(p, p + state.numel());
}

void set_generator_state(at::Generator gen, const uint8_t* bytes, size_t n) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  at::Tensor state = at::empty({static_cast<int64_t>(n)}, at::kByte);
  std::memcpy(state.data_ptr<uint8_t>(), bytes, n);
  try {
    gen.set_state(state);
  } catch (const c10::Error& e) {  // torch's own size/version checks, answered as ours (found by fuzz/checkpoint.cpp)
    throw Error("checkpoint RNG state refused by torch: " + std::string(e.what_without_backtrace()));
  }
}

constexpr char kCudaTag[4] = {'C', 'U', 'D', 'A'};

}  // namespace

// The CPU generator's state, then, on a GPU rank, "CUDA" and the GPU generator's state (older
// checkpoints hold the CPU part alone).
std::vector<uint8_t> capture_rng_state() {
  std::vector<uint8_t> bytes = generator_state(at::detail::getDefaultCPUGenerator());
  if (auto gen = cuda_generator()) {
    const auto cuda = generator_state(*gen);
    bytes.insert(bytes.end(), kCudaTag, kCudaTag + 4);
    bytes.insert(bytes.end(), cuda.begin(), cuda.end());
  }
  return bytes;
}

void restore_rng_state(const std::vector<uint8_t>& bytes) {
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  const size_t cpu_size = generator_state(cpu).size();
  DT_CHECK(bytes.size() >= cpu_size, "checkpoint RNG state of " + std::to_string(bytes.size()) +
                                         " bytes, shorter than a CPU generator's " + std::to_string(cpu_size) +
                                         " (a damaged or hand-made file)");
  set_generator_state(cpu, bytes.data(), cpu_size);
  if (bytes.size() > cpu_size + 4 && std::memcmp(bytes.data() + cpu_size, kCudaTag, 4) == 0) {
    if (auto gen = cuda_generator()) set_generator_state(*gen, bytes.data() + cpu_size + 4, bytes.size() - cpu_size - 4);
  }
}

namespace {

// Bytes travel as int64 words (the communicator's dtypes), the length first.
at::Tensor pack_bytes(const std::vector<uint8_t>& bytes) {
  at::Tensor t = at::zeros({1 + static_cast<int64_t>((bytes.size() + 7) / 8)}, at::kLong);
  t.data_ptr<int64_t>()[0] = static_cast<int64_t>(bytes.size());
  if (!bytes.empty()) std::memcpy(t.data_ptr<int64_t>() + 1, bytes.data(), bytes.size());
  return t;
}

std::vector<uint8_t> unpack_bytes(const int64_t* words) {
  const auto* p = reinterpret_cast<const uint8_t*>(words + 1);
  return std::vector<uint8_t>(p, p + words[0]);
}

// Root's (kind, text) on every rank: kind 0 = ok, 1 = dt::Error, 2 = dt::UsageError.
std::pair<int64_t, std::string> broadcast_status(comm::Communicator& comm, int64_t kind, const std::string& text) {
  at::Tensor head = at::full({2}, 0, at::kLong);
  if (comm.rank() == 0) {
    head.data_ptr<int64_t>()[0] = kind;
    head.data_ptr<int64_t>()[1] = static_cast<int64_t>(text.size());
  }
  comm.broadcast(head)->wait();
  const int64_t length = head.data_ptr<int64_t>()[1];
  at::Tensor body = comm.rank() == 0 ? pack_bytes(std::vector<uint8_t>(text.begin(), text.end()))
                                     : at::zeros({1 + (length + 7) / 8}, at::kLong);
  comm.broadcast(body)->wait();
  const auto bytes = unpack_bytes(body.data_ptr<int64_t>());
  return {head.data_ptr<int64_t>()[0], std::string(bytes.begin(), bytes.end())};
}

[[noreturn]] void rethrow_status(int64_t kind, const std::string& text) {
  if (kind == 2) throw UsageError(text);
  throw Error(text);
}

}  // namespace

std::vector<std::vector<uint8_t>> gather_rng_states(comm::Communicator& comm) {
  const at::Tensor mine = pack_bytes(capture_rng_state());
  at::Tensor sizes = at::empty({comm.size()}, at::kLong);
  comm.all_gather(at::full({1}, mine.numel(), at::kLong), sizes)->wait();
  std::vector<int64_t> counts(sizes.data_ptr<int64_t>(), sizes.data_ptr<int64_t>() + comm.size());
  int64_t total = 0;
  for (auto c : counts) total += c;
  at::Tensor all = at::empty({total}, at::kLong);
  comm.all_gather_v(mine, all, counts)->wait();
  std::vector<std::vector<uint8_t>> states;
  int64_t offset = 0;
  for (auto c : counts) {
    states.push_back(unpack_bytes(all.data_ptr<int64_t>() + offset));
    offset += c;
  }
  return states;
}

CheckpointState capture_training_state(int64_t step, const NamedTensors& trainables, const Optimizer& optimizer,
                                       const DistributedSampler& sampler) {
  CheckpointState s;
  s.step = step;
  s.epoch = sampler.state().epoch;
  s.sampler_position = sampler.state().position;
  for (const auto& [name, t] : trainables) s.trainables.emplace_back(name, t.detach());
  s.optimizer = optimizer.name();
  s.optimizer_state = optimizer.state();
  return s;
}

void apply_training_state(const CheckpointState& state, const NamedTensors& trainables, Optimizer& optimizer,
                          DistributedSampler& sampler, int rank) {
  std::map<std::string, const at::Tensor*> saved;
  for (const auto& [name, t] : state.trainables) saved[name] = &t;
  {
    c10::NoGradGuard no_grad;
    for (const auto& [name, t] : trainables) {
      auto it = saved.find(name);
      DT_CHECK(it != saved.end(), "checkpoint has no trainable tensor '" + name + "' (validate_against first)");
      const_cast<at::Tensor&>(t).copy_(*it->second);
    }
  }
  optimizer.set_state(state.optimizer_state);
  sampler.set_state({state.epoch, state.sampler_position});
  if (!state.rng_states.empty()) restore_rng_state(state.rng_states[rank % state.rng_states.size()]);
}

// ---- collective save / resume ------------------------------------------------------------------

std::string save_checkpoint(comm::Communicator& comm, const std::string& dir, CheckpointState state, int64_t keep) {
  state.rng_states = gather_rng_states(comm);
  state.world_size = comm.size();
  int64_t kind = 0;
  std::string text;
  if (comm.rank() == 0) {
    try {
      text = write_checkpoint(dir, state, keep);
    } catch (const UsageError& e) {
      kind = 2, text = e.what();
    } catch (const std::exception& e) {
      kind = 1, text = e.what();
    }
  }
  const auto [k, t] = broadcast_status(comm, kind, text);
  if (k != 0) rethrow_status(k, t);
  return t;
}

std::optional<ResumePoint> resume_checkpoint(comm::Communicator& comm, const std::string& resume,
                                             const std::string& out_dir, const CheckpointState* expected) {
  std::optional<ResumePoint> point;
  int64_t kind = 0;
  std::string text;
  if (comm.rank() == 0) {
    try {
      if (resume == "auto") {
        if (out_dir.empty()) throw_usage_error("--resume auto needs --out (the checkpoint directory)");
        point = find_resume(out_dir);
        if (!point) log::info("resume: no checkpoint in {} yet; starting from step 0", out_dir);
      } else if (fs::is_directory(resume)) {
        point = find_resume(resume);
        if (!point) throw_usage_error("--resume " + resume + ": the directory holds no checkpoint");
      } else {
        if (!fs::exists(resume)) throw_usage_error("--resume " + resume + ": no such file");
        point = ResumePoint{resume, read_checkpoint(resume)};
      }
      if (point && expected) {
        validate_against(point->state, *expected, point->path);
        for (const auto& d : config_differences(point->state.config_ini, expected->config_ini)) {
          log::info("resume: config differs from the checkpoint's: {}", d);
        }
      }
      if (point) {
        if (point->state.world_size != comm.size()) {
          log::info("resume: checkpoint written by {} ranks, resuming on {}: values and optimizer state are "
                    "identical, the sampler re-shards, so batches and dropout differ from an uninterrupted run",
                    point->state.world_size, comm.size());
        }
        text = point->path;
      }
    } catch (const UsageError& e) {
      kind = 2, text = e.what();
    } catch (const std::exception& e) {
      kind = 1, text = e.what();
    }
  }
  const auto [k, path] = broadcast_status(comm, kind, text);
  if (k != 0) rethrow_status(k, path);
  if (path.empty()) return std::nullopt;
  // Every other rank reads (and verifies) the same file; any failure fails every rank.
  std::string error;
  if (comm.rank() != 0) {
    try {
      point = ResumePoint{path, read_checkpoint(path)};
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  at::Tensor failed = at::full({1}, error.empty() ? 0.0 : 1.0, at::kDouble);
  comm.all_reduce(failed)->wait();
  if (failed.item<double>() > 0) {
    if (!error.empty()) throw Error(error);
    DT_FAIL("checkpoint " + path + " could not be read on another rank (see its error)",
            "--out must be on a file system every rank sees");
  }
  return point;
}

// ---- preemption --------------------------------------------------------------------------------

namespace {
volatile std::sig_atomic_t g_preempt = 0;
extern "C" void on_preempt_signal(int) { g_preempt = 1; }
}  // namespace

void install_preemption_handlers() {
  struct sigaction action {};
  action.sa_handler = on_preempt_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

bool preemption_requested() { return g_preempt != 0; }

bool preemption_agreed(comm::Communicator& comm) {
  at::Tensor flag = at::full({1}, preemption_requested() ? 1.0 : 0.0, at::kDouble);
  comm.all_reduce(flag)->wait();
  return flag.item<double>() > 0;
}

// ---- SHA-256, streamed (OpenSSL's libcrypto, through its EVP interface) ----------------------------

namespace {

// One EVP digest context; sha256_file streams a file of many GB through it in 1 MiB reads.
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) throw Error("sha256: OpenSSL init failed");
  }
  void update(const void* data, size_t n) {
    if (n > 0 && EVP_DigestUpdate(ctx_.get(), data, n) != 1) throw Error("sha256: OpenSSL update failed");
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), digest, &size) != 1) throw Error("sha256: OpenSSL final failed");
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < size; ++i) out += digits[digest[i] >> 4], out += digits[digest[i] & 15];
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

}  // namespace

std::string sha256_hex(const void* data, size_t size) {
  Sha256 h;
  h.update(data, size);
  return h.hex();
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_usage_error("cannot read '" + path + "' to hash it");
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h.update(buf.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw_usage_error("error reading '" + path + "' to hash it");
  return h.hex();
}

}  // namespace dt::dist
