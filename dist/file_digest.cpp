// dist/file_digest.cpp — sha256_file_cached: the weights file's digest, computed once per file version.
//
// Why a cache: ranks agree on the frozen backbone and checkpoints record it by the weights file's sha256;
// hashing T5-3B's 5.7 GB at every start-up (and on every rank) cost ~30 s before step 1. The key is the
// file's canonical path, the proof of freshness its stat: size, mtime and ctime in nanoseconds, inode,
// device. ctime is set by the kernel on every write or metadata change and cannot be set back, so an
// in-place edit that restores the mtime (touch -r, rsync -t) still invalidates the entry. On a shared
// file system the same file has the same stat on every node, so one node's digest serves the others.
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "dist/checkpoint.h"
#include "util/error.h"
#include "util/log.h"

namespace dt::dist {

namespace {

namespace fs = std::filesystem;

struct FileStat {
  int64_t size = 0, mtime_ns = 0, ctime_ns = 0;
  uint64_t inode = 0, device = 0;
};

FileStat stat_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw_usage_error("cannot read '" + path + "' to hash it (stat failed)");
  if (!S_ISREG(st.st_mode)) throw_usage_error("'" + path + "' is not a regular file: nothing to hash");
  FileStat s;
  s.size = static_cast<int64_t>(st.st_size);
  s.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  s.ctime_ns = static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  s.inode = static_cast<uint64_t>(st.st_ino);
  s.device = static_cast<uint64_t>(st.st_dev);
  return s;
}

nlohmann::json stat_json(const FileStat& s) {
  return {{"size", s.size}, {"mtime_ns", s.mtime_ns}, {"ctime_ns", s.ctime_ns}, {"inode", s.inode},
          {"device", s.device}};
}

fs::path cache_dir() {
  if (const char* d = std::getenv("DELTATUNE_CACHE"); d && *d) return fs::path(d) / "sha256";
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return fs::path(d) / "deltatune" / "sha256";
  if (const char* d = std::getenv("HOME"); d && *d) return fs::path(d) / ".cache" / "deltatune" / "sha256";
  return {};
}

}  // namespace

FileDigest sha256_file_cached(const std::string& path) {
  std::error_code ec;
  std::string canonical = fs::weakly_canonical(path, ec).string();
  if (ec || canonical.empty()) canonical = fs::absolute(path).string();
  const FileStat before = stat_of(path);
  const fs::path dir = cache_dir();
  // One entry per canonical path: its name is the path's own sha256 (paths may hold any byte).
  const fs::path entry = dir.empty() ? fs::path() : dir / (sha256_hex(canonical.data(), canonical.size()) + ".json");
  if (!entry.empty()) {
    std::ifstream in(entry);
    if (in) {
      try {
        const nlohmann::json j = nlohmann::json::parse(in);
        if (j.at("path").get<std::string>() == canonical && j.at("stat") == stat_json(before)) {
          const std::string sha = j.at("sha256").get<std::string>();
          if (sha.size() == 64) return {sha, true, 0.0, entry.string()};
        }
      } catch (const nlohmann::json::exception&) {
        // A torn or foreign entry: hash again and overwrite it.
      }
    }
  }
  const int64_t start_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::system_clock::now().time_since_epoch()).count();
  const auto t0 = std::chrono::steady_clock::now();
  FileDigest out;
  out.sha256 = sha256_file(path);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Changed while being read: the digest is of no one version; use it for this run, cache nothing.
  if (!(stat_json(stat_of(path)) == stat_json(before)) || entry.empty()) return out;
  // Changed within the last second ("racy", as git calls it): file times tick coarsely (a jiffy on some
  // kernels), so a write right after ours could leave size, mtime and ctime as they are. Not cached: the
  // next start-up hashes it again and caches it then.
  if (std::max(before.mtime_ns, before.ctime_ns) > start_ns - 1000000000) return out;
  const nlohmann::json j = {{"path", canonical}, {"stat", stat_json(before)}, {"sha256", out.sha256}};
  // Written whole then renamed: ranks of one host hashing at once never read a half-written entry.
  const fs::path tmp = entry.string() + ".tmp" + std::to_string(::getpid());
  fs::create_directories(dir, ec);
  {
    std::ofstream o(tmp);
    o << j.dump() << "\n";
    if (!o.flush()) ec = std::make_error_code(std::errc::io_error);
  }
  if (!ec) fs::rename(tmp, entry, ec);
  if (ec) {
    fs::remove(tmp, ec);
    log::info("warning: sha256 of {}: cannot cache it under {} ({}); it will be hashed again at the next start-up "
              "(set DELTATUNE_CACHE to a writable directory)", path, dir.string(), ec.message());
    return out;
  }
  out.cache_path = entry.string();
  return out;
}

}  // namespace dt::dist
