// launch/generate.cpp — `deltatune generate`: text from a decoder (Llama) model, as llama2.c's run.
//
// Design note: the loop is run.c's (model/llama.h `generate`): the prompt, BOS first, is forced
// token by token through the KV cache, then tokens are sampled (temperature 0: argmax; otherwise
// run.c's xorshift sampler with --seed, top-p with --topp), stopping when BOS comes out or after
// --steps positions. stdout carries only the text (prompt included, as run.c prints it), streamed
// as it is produced; the statistics go to stderr, so `generate > story.txt` is just the story.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <boost/program_options.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "launch/cli.h"
#include "launch/session.h"
#include "model/config.h"
#include "model/device.h"
#include "model/llama.h"
#include "model/load.h"
#include "model/tokenizer.h"
#include "model/tokenizer_bpe.h"
#include "util/error.h"

namespace dt::launch {
namespace {

// run.c's safe_printf: a lone byte that is neither printable nor whitespace (a control byte, or a
// fragment of a UTF-8 sequence the model broke) is dropped rather than corrupting the terminal.
bool printable(const std::string& piece) {
  if (piece.size() != 1) return !piece.empty();
  const unsigned char c = static_cast<unsigned char>(piece[0]);
  return std::isprint(c) || std::isspace(c);
}

int run_generate(const po::variables_map& vm) {
  const std::string model_path = vm["model"].as<std::string>();
  const float temperature = vm["temperature"].as<float>();
  const float topp = vm["topp"].as<float>();
  const int64_t steps = vm["steps"].as<int64_t>();
  if (temperature < 0.0f) throw_usage_error("--temperature must be >= 0, got " + std::to_string(temperature));
  if (topp < 0.0f || topp > 1.0f) throw_usage_error("--topp must be in [0, 1], got " + std::to_string(topp));
  if (steps < 0) throw_usage_error("--steps must be >= 0 (0: the model's max_seq_len)");
  const int threads = vm["threads"].as<int>();
  // A small model generates fastest on one thread (one token is a few tiny matmuls).
  at::set_num_threads(threads > 0 ? threads : 1);

  // The config is checked before any weight is read (t5-11b would take a while to refuse).
  if (model::read_model_config(model_path).arch != model::Arch::Llama)
    throw_usage_error("generate needs a decoder-only (Llama) model; '" + model_path +
                      "' is an encoder or encoder-decoder");
  auto backbone = model::load_backbone(model_path, 0);
  auto* llama = dynamic_cast<model::LlamaBackbone*>(backbone.get());
  if (llama == nullptr)
    throw_usage_error("generate needs a decoder-only (Llama) model; '" + model_path +
                      "' is an encoder or encoder-decoder");
  // One process: the first GPU with --device cuda (auto: when there is one); sampling stays on the host.
  model::backbone_to(*backbone, resolve_device(vm["device"].as<std::string>(), /*local_rank=*/0,
                                               at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0));
  auto tokenizer = model::load_tokenizer(vm["tokenizer"].as<std::string>());
  if (tokenizer->vocab_size() != llama->config().vocab_size)
    throw_usage_error("tokenizer '" + vm["tokenizer"].as<std::string>() + "' has " +
                      std::to_string(tokenizer->vocab_size()) + " tokens, the model " +
                      std::to_string(llama->config().vocab_size));
  const auto* bpe = dynamic_cast<const model::Llama2cTokenizer*>(tokenizer.get());

  std::vector<int64_t> prompt = {tokenizer->bos_id() >= 0 ? tokenizer->bos_id() : 1};
  const std::string text = vm.count("prompt") ? vm["prompt"].as<std::string>() : std::string();
  for (int64_t id : tokenizer->encode(text)) prompt.push_back(id);

  model::GenerateOptions options;
  options.steps = steps;
  options.temperature = temperature;
  options.topp = topp;
  options.seed = vm["seed"].as<uint64_t>();
  options.stop_token = prompt.front();

  // Streaming: llama2.c pieces directly; other tokenizers by decoding the sequence so far and
  // printing what is new (their pieces depend on context).
  std::vector<int64_t> so_far;
  std::string printed;
  auto on_token = [&](int64_t prev, int64_t next) {
    std::string piece;
    if (bpe != nullptr) {
      piece = bpe->piece(prev, next);
    } else {
      so_far.push_back(next);
      const std::string all = tokenizer->decode(so_far);
      piece = all.size() >= printed.size() ? all.substr(printed.size()) : std::string();
      printed = all;
    }
    if (printable(piece)) std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  };
  const auto start = std::chrono::steady_clock::now();
  const auto out = model::generate(*llama, prompt, options, on_token);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fputc('\n', stdout);
  std::fflush(stdout);
  // Every position ran one forward step, the prompt's included; a stop at BOS ran one more.
  const int64_t max_len = llama->config().max_seq_len;
  const int64_t limit = steps <= 0 || steps > max_len ? max_len : steps;
  const int64_t positions = std::min<int64_t>(static_cast<int64_t>(out.size()) + 1, limit);
  std::fprintf(stderr, "generate: %ld positions (prompt %zu tokens) in %.3f s, achieved tok/s: %.1f (%d thread%s)\n",
               static_cast<long>(positions), prompt.size(), seconds,
               seconds > 0 ? static_cast<double>(positions) / seconds : 0.0,
               at::get_num_threads(), at::get_num_threads() == 1 ? "" : "s");
  return 0;
}

}  // namespace

Subcommand generate_subcommand() {
  Subcommand sub;
  sub.name = "generate";
  sub.summary = "generate text from a decoder model (llama2.c run semantics)";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    add_model_options(desc);
    desc.add_options()
        ("prompt", po::value<std::string>(), "text the generation starts from (after BOS); default: none")
        ("steps", po::value<int64_t>()->default_value(256),
         "positions to run, prompt included (0 or more than the model's max_seq_len: max_seq_len)")
        ("temperature", po::value<float>()->default_value(1.0f), "0: greedy argmax; otherwise softmax(logits / T)")
        ("topp", po::value<float>()->default_value(0.9f), "nucleus sampling threshold in (0, 1); 0 or 1: off")
        ("seed", po::value<uint64_t>()->default_value(42), "sampler seed (same seed, same text)");
  };
  sub.run = run_generate;
  return sub;
}

}  // namespace dt::launch
