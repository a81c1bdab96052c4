// bench_magnitude_topk — FISH's magnitude selection (global top-k of |W|), old against new, side by
// side on the same tensors in one run: top_k_mask_streaming (torch ops per tensor, every rank does all),
// top_k_magnitude alone (every rank does all) and top_k_magnitude split across the ranks.
// Not a test: prints a table (time = slowest rank; #wrong = masks whose hash differs from the old
// path's) and, with --json, writes the rows.
//   mpirun -np 2 build/bench/bench_magnitude_topk [--shapes t5-large|t5-3b] [--file F.safetensors]
//          [--keep 0.005] [--reps 1] [--no-old] [--json OUT]
// --shapes makes random bf16 tensors of that T5's shapes in every rank (private memory, 2 bytes per
// parameter per rank); --file maps a bf16 safetensors file instead (bench/t5_big.py writes them; the
// pages are shared by the node's ranks).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "comm/mpi.h"
#include "model/safetensors.h"
#include "sparse/magnitude.h"

using namespace dt;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

namespace {

// HF T5 v1.0 names and shapes as bench/t5_big.py:describe: d_model, d_ff, d_kv, heads, layers.
Named t5_tensors(int64_t d, int64_t ff, int64_t dkv, int64_t heads, int64_t layers) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {{"shared.weight", {32128, d}}};
  const int64_t inner = heads * dkv;
  auto attn = [&](const std::string& p, bool bias) {
    for (const char* m : {".q.weight", ".k.weight", ".v.weight"}) shapes.push_back({p + m, {inner, d}});
    shapes.push_back({p + ".o.weight", {d, inner}});
    if (bias) shapes.push_back({p + ".relative_attention_bias.weight", {32, heads}});
  };
  auto ffn = [&](const std::string& p) {
    shapes.push_back({p + ".DenseReluDense.wi.weight", {ff, d}});
    shapes.push_back({p + ".DenseReluDense.wo.weight", {d, ff}});
    shapes.push_back({p + ".layer_norm.weight", {d}});
  };
  for (int64_t i = 0; i < layers; ++i) {
    const std::string b = fmt::format("encoder.block.{}", i);
    attn(b + ".layer.0.SelfAttention", i == 0);
    shapes.push_back({b + ".layer.0.layer_norm.weight", {d}});
    ffn(b + ".layer.1");
  }
  for (int64_t i = 0; i < layers; ++i) {
    const std::string b = fmt::format("decoder.block.{}", i);
    attn(b + ".layer.0.SelfAttention", i == 0);
    shapes.push_back({b + ".layer.0.layer_norm.weight", {d}});
    attn(b + ".layer.1.EncDecAttention", false);
    shapes.push_back({b + ".layer.1.layer_norm.weight", {d}});
    ffn(b + ".layer.2");
  }
  // Normal(0, 1 / sqrt(fan-in)) in bf16 (the scale changes nothing here but the tie pattern).
  Named out;
  at::manual_seed(0);
  for (const auto& [name, shape] : shapes) {
    if (name.find("layer_norm") != std::string::npos) {
      out.emplace_back(name, at::ones(shape, at::kBFloat16));
    } else {
      out.emplace_back(name, (at::randn(shape) * (1.0 / std::sqrt(static_cast<double>(shape.back())))).to(at::kBFloat16));
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  comm::MpiRuntime mpi(&argc, &argv);
  auto comm = comm::make_mpi_communicator();
  std::string shapes = "t5-large", file, json;
  double keep = 0.005;
  int reps = 1;
  bool old = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() { return std::string(i + 1 < argc ? argv[++i] : ""); };
    if (a == "--shapes") shapes = next();
    else if (a == "--file") file = next();
    else if (a == "--keep") keep = std::stod(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--no-old") old = false;
    else if (a == "--json") json = next();
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  at::set_num_threads(1);  // one thread per rank, as `deltatune train` runs on this node
  const bool root = comm->rank() == 0;
  Named tensors;
  std::shared_ptr<model::SafetensorsFile> mapped;
  const auto g0 = std::chrono::steady_clock::now();
  if (!file.empty()) {
    mapped = std::make_shared<model::SafetensorsFile>(model::SafetensorsFile::open(file));
    for (const auto& e : mapped->entries()) tensors.emplace_back(e.name, mapped->tensor(e.name));
  } else if (shapes == "t5-large") {
    tensors = t5_tensors(1024, 4096, 64, 16, 24);
  } else if (shapes == "t5-3b") {
    tensors = t5_tensors(1024, 16384, 128, 32, 24);
  } else {
    std::fprintf(stderr, "--shapes t5-large | t5-3b\n");
    return 2;
  }
  int64_t params = 0;
  for (const auto& [n, t] : tensors) params += t.numel();
  const std::string source = file.empty() ? shapes + " shapes, random bf16 per rank" : file + " (mapped)";
  if (root) {
    std::printf("# magnitude top-k, keep %.4f of %lld parameters (%s, %zu tensors), %d rank(s), 1 thread each; "
                "made in %.1f s\n",
                keep, static_cast<long long>(params), source.c_str(), tensors.size(), comm->size(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - g0).count());
    std::printf("# %-28s %6s %12s %10s %10s %7s\n", "variant", "ranks", "k", "time_s", "GB/s", "#wrong");
  }
  sparse::TopKOptions o;
  o.keep = keep;
  // The slowest rank's time (an all-gather of every rank's seconds).
  auto slowest = [&](double s) {
    at::Tensor in = at::tensor({s}, at::kDouble);
    at::Tensor all = at::empty({comm->size()}, at::kDouble);
    comm->all_gather(in, all)->wait();
    return all.max().item<double>();
  };
  std::vector<std::string> rows;
  std::string reference;
  auto run = [&](const std::string& variant, const std::function<sparse::Mask()>& fn) {
    double best = 1e30;
    sparse::Mask mask;
    for (int r = 0; r < reps; ++r) {
      comm->barrier()->wait();
      const auto t0 = std::chrono::steady_clock::now();
      mask = fn();
      best = std::min(best, slowest(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
    }
    if (reference.empty()) reference = mask.hash_hex();
    const int wrong = mask.hash_hex() != reference;
    const double gbs = static_cast<double>(params) * 2 / best / 1e9;  // bf16 bytes once through
    if (root) {
      std::printf("  %-28s %6d %12lld %10.2f %10.2f %7d\n", variant.c_str(), comm->size(),
                  static_cast<long long>(mask.count()), best, gbs, wrong);
      std::fflush(stdout);
    }
    rows.push_back(fmt::format(
        R"({{"variant":"{}","ranks":{},"params":{},"tensors":{},"keep":{},"k":{},"time_s":{:.4f},"hash":"{}",)"
        R"("wrong":{},"source":"{}","threads_per_rank":1}})",
        variant, comm->size(), params, tensors.size(), keep, mask.count(), best, mask.hash_hex(), wrong, source));
  };
  if (old) {
    std::vector<model::TensorMeta> metas;
    for (const auto& [n, t] : tensors) metas.push_back({n, t.sizes().vec()});
    run("old: top_k_mask_streaming", [&] {
      return sparse::top_k_mask_streaming(
          metas, [&](size_t t) { return tensors[t].second.abs().to(at::kCPU, at::kFloat); }, o);
    });
  }
  run("new: top_k_magnitude alone", [&] { return sparse::top_k_magnitude(tensors, o, nullptr); });
  run("new: top_k_magnitude split", [&] { return sparse::top_k_magnitude(tensors, o, comm.get()); });
  if (root && !json.empty()) {
    std::ofstream f(json, std::ios::app);
    for (const auto& r : rows) f << r << "\n";
  }
  return 0;
}
