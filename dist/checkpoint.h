// dist/checkpoint.h — compact, atomic, self-describing HDF5 checkpoints, resume and preemption.
//
// Design note: a checkpoint holds only what was learned and what the loop needs to continue exactly:
// the trainable values (dtype kept), the optimizer state, the encoded indices of sparse methods (the
// bytes the caller hands in: dist/ never sees a mask), every rank's RNG state, step / epoch / sampler
// position / schedule, the resolved config, the method description and the backbone's identity —
// never the frozen backbone. One HDF5 file per checkpoint, `ckpt-<step>.h5`, written by rank 0
// (the deltas are replicated), laid out for h5dump and h5py users:
//   /            attributes: format, format_version, step, epoch, sampler_position, [task_sampler], world_size, lr,
//                schedule, method, optimizer, backbone_name, backbone_sha256, backbone_tensors_hash
//   /trainable/<name>   values, the tensor's shape and HDF5 type (bf16: uint16 + attribute dtype)
//   /optimizer/<name>   "<param>.<slot>" as Optimizer::state() names them
//   /indices/<name>     encoded flat indices (uint8) + attributes encoding, count, numel
//   /rng/rank<r>        rank r's RNG state bytes
//   /meta/config, /meta/backbone_config, /meta/method   text (fixed-length strings)
// Every dataset is chunked with shuffle + deflate + fletcher32 (checked first on read, so a flipped
// byte in any chunk is an error, never a wrong value); the file uses HDF5's 1.10 format, whose
// superblock, object headers (attributes) and chunk indices carry checksums too.
//
// Atomicity: write `ckpt-<step>.h5.tmp`, fsync, rename, fsync the directory, then replace `latest`
// the same way; only then delete checkpoints beyond the newest `keep`. A crash or a full disk at any
// point leaves the previous checkpoint and a `latest` that names a complete file.
// On NFS/Lustre set HDF5_USE_FILE_LOCKING=FALSE (HDF5's flock fails there); see cluster/README.md.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "dist/optim.h"
#include "dist/sampler.h"

namespace dt::dist {

inline constexpr int kCheckpointFormatVersion = 1;
// deltatune exits with this after writing a checkpoint on SIGUSR1/SIGTERM (sysexits' EX_TEMPFAIL):
// cluster/ scripts requeue the job when they see it.
inline constexpr int kPreemptedExitCode = 75;

struct BackboneIdentity {
  std::string name;            // config name ("t5-3b", "stories260K", ...)
  std::string config;          // canonical config text (e.g. the JSON of model::config_metadata)
  std::string weights_sha256;  // of the weights file; "" for a named config initialized at random
  std::string tensors_hash;    // hash_hex(hash_tensors(frozen)): the weights actually in memory; "" = unchecked
};

// One sparse tensor's indices, already encoded by the caller (e.g. sparse/index_codec.h).
struct SparseIndex {
  std::string name;      // the trainable tensor whose entries these are
  std::string encoding;  // the codec's name for the bytes, e.g. "deltatune-index-v1"
  std::vector<uint8_t> bytes;
  int64_t count = 0;     // indices encoded
  int64_t numel = 0;     // elements of the dense tensor they index
};

struct CheckpointState {
  int64_t step = 0;  // optimizer steps taken
  int64_t epoch = 0;
  int64_t sampler_position = 0;  // DistributedSampler::State::position
  // A multi-task run's sampler (tasks/multitask.h: batches drawn and every task's epoch/position) as
  // its own text; "" for one task, whose state is epoch + sampler_position. Attribute task_sampler.
  std::string task_sampler;
  int64_t world_size = 1;
  double lr = 0;                 // rate of the last step taken
  std::string schedule;          // e.g. "linear base_lr=0.001 warmup=0 total=200"
  std::string optimizer;         // Optimizer::name()
  NamedTensors trainables;       // CPU tensors, any dtype
  NamedTensors optimizer_state;  // Optimizer::state()
  std::vector<SparseIndex> indices;
  std::vector<std::vector<uint8_t>> rng_states;  // per rank (rank order)
  std::string config_ini;        // render_config
  std::string method;            // MethodSet::describe()
  BackboneIdentity backbone;
};

// ---- files -------------------------------------------------------------------------------------

// "ckpt-<step>.h5" (steps zero-padded to 8 digits so names sort like steps).
std::string checkpoint_file_name(int64_t step);

// Writes `state` to dir/ckpt-<step>.h5 atomically (see the note on top), points dir/latest at it and
// keeps the newest `keep` checkpoints (keep <= 0: all). Not collective: rank 0 calls it. Creates
// `dir`. Throws dt::Error (disk full, permissions) after removing its temporary file; the previous
// checkpoint and `latest` are then untouched. Returns the path written.
std::string write_checkpoint(const std::string& dir, const CheckpointState& state, int64_t keep);

// Reads and verifies a checkpoint: every dataset's checksum, the format and its version. Throws
// dt::Error "checkpoint X is corrupted: dataset Y failed its checksum" (or names what else is wrong:
// truncated, not HDF5, not a deltatune checkpoint, a newer format).
CheckpointState read_checkpoint(const std::string& path);

// Throws dt::UsageError naming the first difference between a saved checkpoint and the current
// run: backbone identity (name, config, sha256, tensors hash; "" on either side is not compared),
// method, optimizer, trainable names / shapes / dtypes, indices (mask). `expected` needs only those
// fields (trainables may be the live tensors; their values are not compared).
void validate_against(const CheckpointState& saved, const CheckpointState& expected, const std::string& path);

// Keys of two resolved configs (INI) that differ, as "section.key: saved -> current", ignoring the
// options that may change on resume (out, resume, metrics, ckpt.*, train.steps, threads, log-all-ranks).
std::vector<std::string> config_differences(const std::string& saved_ini, const std::string& current_ini);

// The newest checkpoint of `dir` that verifies (a full read_checkpoint), falling back past corrupted
// or truncated ones (each logged with the reason). `latest` is followed when it names the newest file;
// a complete newer file (a crash between its rename and the pointer update) is preferred. nullopt
// when `dir` has no checkpoint; dt::UsageError when it has some but none verifies.
struct ResumePoint {
  std::string path;
  CheckpointState state;
};
std::optional<ResumePoint> find_resume(const std::string& dir);

// Every checkpoint file of `dir` (full paths), newest step first.
std::vector<std::string> list_checkpoints(const std::string& dir);

// What `deltatune inspect` shows, without reading the data (no checksums are verified).
struct DatasetInfo {
  std::string group;  // "trainable", "optimizer", "indices", "rng", "meta"
  std::string name;
  std::string dtype;  // torch's name ("float32", "bfloat16", ...) or "uint8"/"string"
  std::vector<int64_t> shape;
  int64_t raw_bytes = 0;     // uncompressed
  int64_t stored_bytes = 0;  // in the file (after shuffle + deflate, with checksums)
  std::vector<std::pair<int64_t, int64_t>> chunks;  // (file offset, bytes) of every stored chunk
};
struct CheckpointInfo {
  int64_t file_bytes = 0;
  CheckpointState meta;  // every field but tensors, indices' bytes and rng states
  std::vector<DatasetInfo> datasets;
};
CheckpointInfo inspect_checkpoint(const std::string& path);

// Writes `text` to dir/name atomically: a temp file, fsync, rename, directory fsync (the `latest`
// pointer; export's adapter_config.json). dt::Error naming the file when it cannot.
void replace_file_atomically(const std::string& dir, const std::string& name, const std::string& text);

// ---- state capture and restore -----------------------------------------------------------------

// This process's RNG state: torch's default CPU generator (dropout, initialization). The sampler
// needs none (its order is a function of seed and epoch).
std::vector<uint8_t> capture_rng_state();
void restore_rng_state(const std::vector<uint8_t>& state);

// Collective: every rank's capture_rng_state(), in rank order, on every rank (bytes travel packed
// into int64, which the communicator supports).
std::vector<std::vector<uint8_t>> gather_rng_states(comm::Communicator& comm);

// Fills step, epoch, sampler_position, trainables (detached views), optimizer and optimizer_state
// from the live objects; the caller adds lr, schedule, config, method, backbone, indices.
CheckpointState capture_training_state(int64_t step, const NamedTensors& trainables, const Optimizer& optimizer,
                                       const DistributedSampler& sampler);

// Copies a validated checkpoint into the live objects: trainable values (by name, in place, no
// autograd), optimizer state, sampler state and this rank's RNG state. At the world size the
// checkpoint was written with, rank r gets rank r's RNG state and the run continues bit for bit; at
// another world size rank r gets rng_states[r % saved] and the sampler re-shards (see sampler.h), so
// values and optimizer state are identical but later batches and dropout masks differ.
void apply_training_state(const CheckpointState& state, const NamedTensors& trainables, Optimizer& optimizer,
                          DistributedSampler& sampler, int rank);

// ---- collective save / resume ------------------------------------------------------------------

// Collective: gathers the RNG states into `state`, rank 0 writes (write_checkpoint), and the outcome
// is broadcast so that a failed write throws the same dt::Error on every rank (nobody hangs).
// Returns the path written (on every rank).
std::string save_checkpoint(comm::Communicator& comm, const std::string& dir, CheckpointState state, int64_t keep);

// Collective. `resume` is "auto" (find_resume in `out_dir`; nullopt when it holds no checkpoint yet)
// or a path (a checkpoint file, or a directory searched like auto). Rank 0 picks the file, validates it
// against `expected` (validate_against) and logs config differences; the chosen path is broadcast
// and every other rank reads and verifies it too (the directory must be visible to every rank). Any
// failure on any rank throws the same error on every rank.
// `expected` null: no validation (train's --fish.refresh-every reads the checkpoint's mask before the
// method exists; the full resume later validates the same file).
std::optional<ResumePoint> resume_checkpoint(comm::Communicator& comm, const std::string& resume,
                                             const std::string& out_dir, const CheckpointState* expected);

// ---- preemption --------------------------------------------------------------------------------

// Installs SIGUSR1 and SIGTERM handlers that only set a flag (async-signal-safe).
void install_preemption_handlers();
// Whether this process received one of them (the flag is sticky).
bool preemption_requested();
// Collective (one 1-element all-reduce): whether any rank received one. Call at a step boundary.
bool preemption_agreed(comm::Communicator& comm);

// ---- hashing -----------------------------------------------------------------------------------

// SHA-256 of a file, 64 lowercase hex digits (streams it; dt::UsageError naming an unreadable file).
std::string sha256_file(const std::string& path);
std::string sha256_hex(const void* data, size_t size);

// sha256_file, remembered: a multi-GB weights file is read once, not at every start-up. The digest is
// cached under $DELTATUNE_CACHE (else $XDG_CACHE_HOME/deltatune, else ~/.cache/deltatune)/sha256/, one
// small JSON file per canonical path, and trusted only while the file's size, mtime, ctime, inode and
// device are those it was computed for: a file changed in any way is hashed again (even one whose mtime
// was put back: its ctime cannot be). No writable cache directory: hashed every time (a warning says so).
struct FileDigest {
  std::string sha256;
  bool from_cache = false;  // read from the cache (no byte of the file read)
  double seconds = 0;       // spent hashing (0 from the cache)
  std::string cache_path;   // where the digest is cached ("" when it could not be written)
};
FileDigest sha256_file_cached(const std::string& path);

}  // namespace dt::dist
