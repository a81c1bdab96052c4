// LST (peft/lst): table-driven over tiny models. What attach() creates equals plan() and the
// closed-form counts; gradients reach only LST's tensors and the task head, and the backbone stays
// bit-identical through optimizer steps; the autograd graph holds none of the backbone's activations;
// the side network is the backbone pruned (r = 1 with mu = 1 reproduces the backbone's logits exactly;
// at r = 2, Llama's rotary pairs and grouped kv heads stay consistent); bad options are refused.
// LST has no row in method_cases.h: that table runs backbone->forward, and LST runs the forward itself.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "model/load.h"
#include "model/t5.h"
#include "peft/lst/lst.h"
#include "peft/method.h"
#include "tests/peft/test_adapters_util.h"
#include "util/error.h"

using namespace dt;
using dt::testing::adapters::batch_for;
using dt::testing::adapters::by_name;
using dt::testing::adapters::method_set;
using dt::testing::adapters::tiny;
using dt::testing::adapters::without_head;

namespace {

struct LstCase {
  std::string model;
  std::vector<std::string> args;  // --lst.* options
};

const std::vector<LstCase>& lst_cases() {
  static const std::vector<LstCase> cases = {
      {"tiny-llama", {"--lst.r", "2"}},
      {"tiny-llama", {"--lst.r", "2", "--lst.drop", "1"}},
      {"tiny-t5", {"--lst.r", "2"}},
      {"tiny-t5", {"--lst.r", "4", "--lst.drop", "0"}},
      {"tiny-t5-v1_1", {"--lst.r", "2", "--lst.drop", "1"}},
      {"stories260K", {"--lst.r", "4"}},
      {"stories260K", {}},                  // the default r = 8: d_ff 172 // 8 = 21, head size 8 // 8 -> one pair
      {"stories260K", {"--lst.r", "3"}},    // nothing divides: floors everywhere (d_ff 57, head size 2)
      {"tiny-t5", {"--lst.r", "3"}},        // d_model 16 // 3 = 5, d_ff 10, d_kv 1
      {"tiny-bert", {"--lst.r", "2"}},
      {"tiny-bert", {"--lst.r", "3", "--lst.drop", "0"}},  // head size 4 // 3 = 1: side d_model 4 heads x 1
  };
  return cases;
}

peft::MethodSet lst_set(const std::vector<std::string>& lst_args, const std::string& method = "lst") {
  std::vector<std::string> argv = {"--method", method};
  argv.insert(argv.end(), lst_args.begin(), lst_args.end());
  return method_set(argv);
}

std::string label(const LstCase& c) {
  std::string out = c.model;
  for (const auto& a : c.args) out += " " + a;
  return out;
}

peft::LstOptions options_of(const std::vector<std::string>& args) {
  peft::LstOptions o;
  for (size_t i = 0; i + 1 < args.size(); i += 2) {
    if (args[i] == "--lst.r") o.r = std::stoll(args[i + 1]);
    if (args[i] == "--lst.drop") o.drop.push_back(std::stoll(args[i + 1]));  // one index in these cases
  }
  return o;
}

// LST's trainable count in closed form (the side network, its ladders, Up), from the configs.
int64_t closed_form(const model::ModelConfig& c, const peft::LstOptions& o) {
  // LST's code: every dimension d // r. Llama: heads unchanged, head size floored to even (at least 2),
  // and the side's d_model = heads x head size.
  const bool llama = c.arch == model::Arch::Llama, bert = c.arch == model::Arch::Bert;
  const int64_t r = o.r, d = c.d_model, fs = c.d_ff / r, drop = static_cast<int64_t>(o.drop.size());
  const int64_t hk = llama ? std::max<int64_t>(2, (c.d_kv / r) / 2 * 2) : c.d_kv / r;
  const int64_t ds = llama || bert ? c.num_heads * hk : d / r;
  const int64_t q = c.num_heads * hk, kv = c.num_kv_heads * hk;
  const int64_t ffn = (c.gated_ffn ? 3 : 2) * ds * fs;
  const int64_t ladder = d * ds + ds;  // one downsample with its bias
  if (c.arch == model::Arch::Llama) {
    const int64_t layers = c.num_layers - drop;
    const int64_t layer = 2 * ds * q + 2 * ds * kv + ffn + 2 * ds;
    return layers * layer + ds + (layers + 1) * ladder + layers + d * ds;
  }
  if (bert) {  // biased linears, post-LN; position and type tables, embedding LayerNorm and pooler train
    const int64_t layers = c.num_layers - drop;
    const int64_t layer = 4 * ds * ds + 4 * ds + 2 * ds * fs + fs + ds + 4 * ds;
    const int64_t embeddings = (c.max_position_embeddings + c.type_vocab_size) * ds + 2 * ds;
    return embeddings + layers * layer + ds * ds + ds + (layers + 1) * ladder + layers + d * ds;
  }
  const int64_t enc = c.num_layers - drop, dec = c.num_decoder_layers - drop;
  const int64_t enc_layer = 4 * ds * q + ffn + 2 * ds, dec_layer = 8 * ds * q + ffn + 3 * ds;
  const int64_t side = enc * enc_layer + dec * dec_layer + 2 * c.relative_attention_num_buckets * c.num_heads + 2 * ds;
  return side + (2 + enc + dec) * ladder + enc + dec + d * ds;
}

std::map<std::string, at::Tensor> snapshot(const model::Backbone& backbone) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : backbone.named_parameters()) out[name] = t.detach().clone();
  return out;
}

// Nodes reachable from the loss and the bytes of the values they produced in the forward pass (the
// activations the graph holds on to), plus every size that occurs in those values' shapes.
struct GraphStats {
  int64_t nodes = 0, bytes = 0;
  std::set<int64_t> sizes;
};

GraphStats graph_stats(const at::Tensor& loss) {
  GraphStats s;
  std::set<torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> todo = {loss.grad_fn().get()};
  while (!todo.empty()) {
    torch::autograd::Node* n = todo.back();
    todo.pop_back();
    if (n == nullptr || !seen.insert(n).second) continue;
    ++s.nodes;
    for (uint32_t i = 0; i < n->num_inputs(); ++i) {
      const at::Tensor shape = n->input_metadata(i).zeros_like();
      s.bytes += shape.numel() * static_cast<int64_t>(shape.element_size());
      for (int64_t size : shape.sizes()) s.sizes.insert(size);
    }
    for (const auto& e : n->next_edges()) todo.push_back(e.function.get());
  }
  return s;
}

}  // namespace

TEST(Lst, AttachMatchesPlanAndClosedForm) {
  for (const auto& c : lst_cases()) {
    auto backbone = tiny(c.model);
    const auto set = lst_set(c.args);
    const auto planned = set.plan(backbone->config(), 2);
    const auto attached = set.apply(*backbone);
    dt::testing::adapters::expect_attach_matches_plan(planned, attached, label(c));
    int64_t lst = 0;
    for (const auto& t : without_head(attached)) lst += t.tensor.numel();
    EXPECT_EQ(lst, closed_form(backbone->config(), options_of(c.args))) << label(c);
    EXPECT_EQ(model::total_params(set.plan(backbone->config(), 2)) - lst,
              model::total_params(peft::head_plan(backbone->config(), 2)))
        << label(c);
  }
  // The paper's t5-base setting (r = 8, layers 0, 4, 8 dropped) from the config alone.
  const auto t5 = model::named_config("t5-base");
  peft::LstOptions paper;
  paper.drop = {0, 4, 8};
  EXPECT_EQ(model::total_params(lst_set({"--lst.drop", "0,4,8"}).plan(t5, 0)), closed_form(t5, paper));
  EXPECT_EQ(peft::lst_side_config(t5, paper).d_model, 96);
  EXPECT_EQ(closed_form(t5, paper), 3877938);  // 1.74% of t5-base, as in the paper's Table 1
}

TEST(Lst, GradientsReachOnlyLstAndBackboneStaysBitIdentical) {
  for (const auto& c : lst_cases()) {
    auto backbone = tiny(c.model);
    const auto set = lst_set(c.args);
    const auto trainables = set.apply(*backbone);
    const auto before = snapshot(*backbone);
    std::set<std::string> trains;
    for (const auto& t : trainables) trains.insert(t.name);
    std::vector<at::Tensor> params;
    for (const auto& t : trainables) params.push_back(t.tensor);
    torch::optim::Adam adam(params, torch::optim::AdamOptions(1e-2));
    const auto batch = batch_for(backbone->config());
    backbone->set_training(true);
    double first = 0, last = 0;
    for (int step = 0; step < 30; ++step) {
      adam.zero_grad();
      const at::Tensor loss = set.forward(*backbone, batch).loss;
      loss.backward();
      if (step == 0) {
        for (const auto& t : trainables) {
          EXPECT_TRUE(t.tensor.grad().defined()) << label(c) << ": no gradient reached " << t.name;
        }
        for (const auto& [name, t] : backbone->named_parameters()) {
          if (!trains.count(name)) {
            EXPECT_FALSE(t.grad().defined()) << label(c) << ": " << name;
          }
        }
      }
      adam.step();
      (step == 0 ? first : last) = loss.item<double>();
    }
    EXPECT_LT(last, first) << label(c) << ": the loss did not fall on a fixed batch";
    for (const auto& [name, t] : backbone->named_parameters()) {
      if (trains.count(name)) continue;  // the task head (Llama's score) trains
      EXPECT_TRUE(at::equal(t, before.at(name))) << label(c) << ": frozen " << name << " changed";
    }
  }
}

TEST(Lst, KeepsNoBackboneActivations) {
  for (const auto& c : lst_cases()) {
    auto full = tiny(c.model);
    auto side = tiny(c.model);
    const auto full_set = lst_set({}, "full");
    const auto lst = lst_set(c.args);
    full_set.apply(*full);
    lst.apply(*side);
    const auto batch = batch_for(full->config());
    const GraphStats f = graph_stats(full_set.forward(*full, batch).loss);
    const GraphStats l = graph_stats(lst.forward(*side, batch).loss);
    // The backbone's FFN intermediate (d_ff wide) is its widest activation; full fine-tuning keeps
    // one per layer, LST none: nothing of width d_ff is in its graph. (tiny-bert has as many positions
    // as d_ff, and the side's own position table is in the graph: there the byte count alone tells.)
    const int64_t d_ff = full->config().d_ff;
    EXPECT_TRUE(f.sizes.count(d_ff)) << label(c);
    if (full->config().arch != model::Arch::Bert || full->config().max_position_embeddings != d_ff) {
      EXPECT_FALSE(l.sizes.count(d_ff)) << label(c) << ": a d_ff-wide value is in LST's graph";
    }
    EXPECT_LT(l.bytes, f.bytes) << label(c);
    std::cout << "[ graph    ] " << label(c) << ": full " << f.nodes << " nodes, " << f.bytes << " B of values; lst "
              << l.nodes << " nodes, " << l.bytes << " B (" << static_cast<double>(l.bytes) / f.bytes << "x)\n";
  }
}

namespace {

// Counts the bytes of every CPU tensor allocated while installed: the live total and its peak. One
// instance for the process, so that tensors freed after a measurement still find their counter.
class CountingAllocator final : public c10::Allocator {
 public:
  static CountingAllocator& instance() {
    static auto* a = new CountingAllocator();
    return *a;
  }
  void install() {
    base_ = c10::GetCPUAllocator();
    live_ = peak_ = 0;
    c10::SetCPUAllocator(this, kPriority);
  }
  void uninstall() { c10::SetCPUAllocator(base_, kPriority); }
  // torch 2.x: allocate() is non-const and copy_data() must be defined.
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    const c10::Device device = inner.device();
    live_ += static_cast<int64_t>(n);
    peak_ = std::max(peak_, live_);
    return {data, new Block{std::move(inner), n}, &release, device};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
  int64_t live() const { return live_; }
  int64_t peak() const { return peak_; }

 private:
  static constexpr uint8_t kPriority = 200;
  struct Block {
    c10::DataPtr inner;
    size_t n;
  };
  static void release(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    instance().live_ -= static_cast<int64_t>(b->n);
    delete b;
  }
  c10::Allocator* base_ = nullptr;
  mutable int64_t live_ = 0, peak_ = 0;
};

struct StepMemory {
  int64_t peak = 0;   // bytes above the weights at the peak of forward + backward
  int64_t graph = 0;  // bytes still allocated when the forward returns (what backward will read)
  GraphStats stats;
};

// One training step (forward + backward) of `method` on a fresh `model` with num_labels 2.
StepMemory step_memory(const std::string& model, const std::string& method, const std::vector<std::string>& args,
                       const model::Batch& batch) {
  auto backbone = tiny(model);
  const auto set = lst_set(args, method);
  set.apply(*backbone);
  backbone->set_training(true);  // LST's side network trains (dropout) while gradients are on
  StepMemory m;
  CountingAllocator& counting = CountingAllocator::instance();
  counting.install();
  {
    at::Tensor loss = set.forward(*backbone, batch).loss;
    m.graph = counting.live();
    m.stats = graph_stats(loss);
    loss.backward();
  }
  m.peak = counting.peak();
  counting.uninstall();
  return m;
}

model::Batch random_batch(int64_t vocab, int64_t rows, int64_t len) {
  at::manual_seed(5);
  model::Batch b;
  b.input_ids = at::randint(3, vocab, {rows, len}, at::kLong);
  b.attention_mask = at::ones({rows, len}, at::kLong);
  b.labels = at::randint(0, 2, {rows}, at::kLong);
  return b;
}

void compare_memory(const std::string& model, const std::vector<std::string>& lst_args, const model::Batch& batch) {
  const StepMemory full = step_memory(model, "full", {}, batch);
  const StepMemory lst = step_memory(model, "lst", lst_args, batch);
  std::string opts;
  for (const auto& a : lst_args) opts += " " + a;
  std::cout << "[ memory   ] " << model << " batch " << batch.input_ids.size(0) << "x" << batch.input_ids.size(1)
            << opts << ": kept for backward full " << full.graph << " B, lst " << lst.graph << " B ("
            << static_cast<double>(lst.graph) / full.graph << "x); step peak full " << full.peak << " B, lst "
            << lst.peak << " B (" << static_cast<double>(lst.peak) / full.peak << "x); graph nodes "
            << full.stats.nodes << " vs " << lst.stats.nodes << "\n";
  EXPECT_LT(lst.graph, full.graph) << model;
  EXPECT_LT(lst.peak, full.peak) << model;
}

}  // namespace

TEST(Lst, StepMemoryAgainstFullOnStories260K) {
  compare_memory("stories260K", {"--lst.r", "4"}, random_batch(512, 16, 64));
}

// A measurement, not a check (a few seconds): run with --gtest_also_run_disabled_tests.
TEST(Lst, DISABLED_StepMemoryAgainstFullOnT5Small) {
  model::Batch batch = random_batch(32128, 8, 128);
  compare_memory("t5-small", {"--lst.r", "8"}, batch);
}

TEST(Lst, RatioOnePrunesToTheBackboneAndReproducesIt) {
  // r = 1 keeps every index in order: the side network is the backbone. With Down_first = Up = I and
  // every gate closed to the ladder (mu = 1), LST computes exactly the backbone's function.
  for (const std::string name : {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "stories260K", "tiny-bert"}) {
    for (const int64_t labels : {2, 0}) {
      if (name == "tiny-bert" && labels == 0) continue;  // BERT's LST needs its task head (refused below)
      at::manual_seed(7);
      auto bare = model::make_backbone(model::named_config(name), labels);
      at::manual_seed(7);
      auto backbone = model::make_backbone(model::named_config(name), labels);
      for (auto* b : {bare.get(), backbone.get()}) {
        if (auto* t5 = dynamic_cast<model::T5Backbone*>(b)) t5->set_label_token_ids({5, 6});
      }
      const auto set = lst_set({"--lst.r", "1"});
      const auto trainables = without_head(set.apply(*backbone));
      const auto frozen = snapshot(*bare);
      {
        c10::NoGradGuard no_grad;
        for (const auto& t : trainables) {
          if (t.name.rfind("side.", 0) == 0) {
            EXPECT_TRUE(at::equal(t.tensor, frozen.at(t.name.substr(5)))) << name << ": " << t.name;
          } else if (t.name.find("side_gates") != std::string::npos) {
            t.tensor.fill_(100.0);  // mu = sigmoid(1000) = 1 in float
          } else if (t.name.find(".bias") != std::string::npos) {
            t.tensor.zero_();
          } else if (t.name.find("side_first_downsample.weight") != std::string::npos ||
                     t.name == "side_upsample.weight") {
            t.tensor.copy_(at::eye(t.tensor.size(0)));
          }
        }
      }
      model::Batch batch = batch_for(backbone->config());
      if (labels == 0) batch.labels = at::randint(3, backbone->config().vocab_size, {3, 6}, at::kLong);
      c10::NoGradGuard no_grad;
      bare->set_training(false);
      backbone->set_training(false);
      const auto want = bare->forward(batch);
      const auto got = set.forward(*backbone, batch);
      EXPECT_TRUE(at::allclose(want.logits, got.logits, 1e-5, 1e-5))
          << name << " labels " << labels << ": max diff " << (want.logits - got.logits).abs().max().item<double>();
      EXPECT_NEAR(want.loss.item<double>(), got.loss.item<double>(), 1e-5) << name << " labels " << labels;
    }
  }
}

TEST(Lst, PruningKeepsRotaryPairsAndKvGroupsTogether) {
  // stories260K's shape: 8 query heads over 4 kv heads of size 8; r = 2 keeps 4 of 8 per group,
  // as 2 rotary pairs (j, j + 4). The side's q and k rows are recovered among the backbone's rows.
  auto backbone = tiny("stories260K");
  {
    c10::NoGradGuard no_grad;  // distinct final-norm values identify the kept residual indices
    for (auto& [name, t] : backbone->named_parameters()) {
      if (name == "model.norm.weight") t.copy_(at::arange(1, t.numel() + 1, at::kFloat));
    }
  }
  const auto weights = snapshot(*backbone);
  const auto trainables = by_name(lst_set({"--lst.r", "2"}).apply(*backbone));
  const at::Tensor norm = trainables.at("side.model.norm.weight");
  const at::Tensor keep = (norm - 1).to(at::kLong);  // backbone residual index of each side index
  ASSERT_TRUE(at::equal(weights.at("model.norm.weight").index_select(0, keep), norm));
  EXPECT_TRUE(at::equal(keep, std::get<0>(at::sort(keep)))) << "residual indices keep their order";

  const int64_t D = 8, Ds = 4, H = 8, KV = 4;
  for (int layer = 0; layer < 5; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
    std::map<std::string, std::vector<int64_t>> rows;  // side row -> backbone row, per projection
    for (const std::string proj : {"q_proj", "k_proj"}) {
      const at::Tensor full = weights.at(p + proj + ".weight").index_select(1, keep);
      const at::Tensor side = trainables.at("side." + p + proj + ".weight");
      for (int64_t i = 0; i < side.size(0); ++i) {
        const at::Tensor match = (full - side[i]).abs().sum(1).eq(0).nonzero();
        ASSERT_EQ(match.numel(), 1) << p << proj << " side row " << i;
        rows[proj].push_back(match.item<int64_t>());
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / KV);
      for (int64_t j = 0; j < Ds; ++j) {
        const int64_t q = rows["q_proj"][h * Ds + j], k = rows["k_proj"][g * Ds + j];
        EXPECT_EQ(q / D, h) << "side head " << h << " reads its own backbone head";
        EXPECT_EQ(q % D, k % D) << "query head " << h << " and its kv head keep the same dims";
        if (j < Ds / 2) {
          EXPECT_EQ(rows["q_proj"][h * Ds + j + Ds / 2], q + D / 2) << "rotary pair split";
        }
      }
    }
  }
}

TEST(Lst, RefusesWhatItCannotServe) {
  auto expect_usage = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error, expected one containing '" << needle << "'";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const auto stories = model::named_config("stories260K");
  expect_usage([&] { lst_set({"--lst.r", "5"}).plan(model::named_config("tiny-t5"), 2); }, "too large");
  expect_usage([&] { lst_set({"--lst.r", "5"}).plan(model::named_config("tiny-bert"), 2); }, "too large");
  expect_usage([&] { lst_set({"--lst.r", "2"}).apply(*model::make_backbone(model::named_config("tiny-bert"), 0)); },
               "task head");
  expect_usage([&] { lst_set({"--lst.r", "2", "--lst.drop", "2"}).plan(model::named_config("tiny-llama"), 2); },
               "not a layer");
  expect_usage([&] { lst_set({"--lst.r", "2", "--lst.drop", "0,1"}).plan(model::named_config("tiny-llama"), 2); },
               "drops every layer");
  expect_usage([&] { lst_set({"--lst.drop", "a"}); }, "not a layer index");
  expect_usage([&] { lst_set({"--lst.prune", "fisher"}); }, "magnitude or random");

  // Methods that hook or train the backbone cannot combine with a backbone run without autograd.
  for (const std::string spec : {"lora+lst", "lst+lora", "lst+full"}) {
    auto backbone = tiny("tiny-llama");
    try {
      const auto set = lst_set({"--lst.r", "2"}, spec);
      set.apply(*backbone);
      set.forward(*backbone, batch_for(backbone->config()));
      ADD_FAILURE() << spec << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("combines with no other method"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(lst_set({"--lst.r", "4", "--lst.drop", "0,4,8"}).describe(),
            "lst(r=4,drop=0,4,8,gate_temperature=0.1,prune=magnitude)");
}

