// GradSync under mpirun -np 2/4: every rank trains a tiny MLP on its own slice of one global batch;
// after finish() its gradients must equal the single-process gradient of the whole batch, which
// every rank also computes locally as the reference.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dist/grad_sync.h"
#include "tests/mpi_test_util.h"
#include "util/error.h"

namespace dt::dist {
namespace {

constexpr int64_t kIn = 16, kHidden = 32, kOut = 8, kBatch = 6;  // kBatch per rank per micro-step
// Small caps so the MLP (1864 floats) spans 3 buckets: [fc2.bias fc2.weight] closes the 1 KiB first
// bucket, [fc1.bias fc1.weight] the 4 KiB second one, [fc0.bias fc0.weight] stays open.
constexpr double kFirstCapMb = 1.0 / 1024, kCapMb = 4.0 / 1024;
constexpr int64_t kNumel = kIn * kHidden + kHidden + kHidden * kHidden + kHidden + kHidden * kOut + kOut;

comm::Communicator& C() { return dt::testing::test_comm(); }

struct MlpImpl : torch::nn::Module {
  MlpImpl(bool extra_unused) {
    fc0 = register_module("fc0", torch::nn::Linear(kIn, kHidden));
    fc1 = register_module("fc1", torch::nn::Linear(kHidden, kHidden));
    fc2 = register_module("fc2", torch::nn::Linear(kHidden, kOut));
    // Registered last, so it lands in the first bucket; never used by forward.
    if (extra_unused) unused = register_module("unused", torch::nn::Linear(kOut, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return fc2(torch::tanh(fc1(torch::tanh(fc0(x)))));
  }
  torch::nn::Linear fc0{nullptr}, fc1{nullptr}, fc2{nullptr}, unused{nullptr};
};
TORCH_MODULE(Mlp);

Mlp make_mlp(uint64_t seed, bool extra_unused = false) {
  torch::manual_seed(seed);
  return Mlp(extra_unused);
}

std::vector<std::pair<std::string, at::Tensor>> trainable(Mlp& mlp) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : mlp->named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

// The global batch, identical on every rank: `micro` micro-steps × size() ranks × kBatch rows.
struct Data {
  torch::Tensor x, y;
};
Data global_batch(uint64_t seed, int micro) {
  torch::manual_seed(seed);
  int64_t n = static_cast<int64_t>(micro) * C().size() * kBatch;
  return {torch::randn({n, kIn}), torch::randn({n, kOut})};
}
// Rows of this rank for micro-step m.
torch::Tensor rows(const torch::Tensor& t, int m) {
  return t.narrow(0, (static_cast<int64_t>(m) * C().size() + C().rank()) * kBatch, kBatch);
}

torch::Tensor loss_of(Mlp& mlp, const torch::Tensor& x, const torch::Tensor& y) {
  return torch::mse_loss(mlp->forward(x), y);
}

// ||a - b|| / ||b|| over all parameters' gradients.
double grad_rel_error(Mlp& got, Mlp& ref) {
  auto g = got->parameters(), r = ref->parameters();
  double diff = 0, norm = 0;
  for (size_t k = 0; k < g.size(); ++k) {
    diff += (g[k].grad() - r[k].grad()).pow(2).sum().item<double>();
    norm += r[k].grad().pow(2).sum().item<double>();
  }
  return std::sqrt(diff / norm);
}
double param_rel_error(Mlp& got, Mlp& ref) {
  auto g = got->parameters(), r = ref->parameters();
  double diff = 0, norm = 0;
  for (size_t k = 0; k < g.size(); ++k) {
    diff += (g[k] - r[k]).pow(2).sum().item<double>();
    norm += r[k].pow(2).sum().item<double>();
  }
  return std::sqrt(diff / norm);
}

GradSyncOptions small_buckets(Compression c = Compression::None) {
  GradSyncOptions o;
  o.first_bucket_cap_mb = kFirstCapMb;
  o.bucket_cap_mb = kCapMb;
  o.compress = c;
  return o;
}

bool inside(const at::Tensor& view, const at::Tensor& buffer) {
  auto* p = static_cast<const char*>(view.data_ptr());
  auto* b = static_cast<const char*>(buffer.data_ptr());
  return p >= b && p + view.nbytes() <= b + buffer.nbytes();
}

// ---------------------------------------------------------------------------- layout

TEST(GradSync, GradsAreViewsIntoBuckets) {
  auto mlp = make_mlp(1);
  GradSync sync(C(), trainable(mlp), small_buckets());
  ASSERT_EQ(sync.buckets().size(), 3u);
  EXPECT_EQ(sync.param_name(sync.buckets()[0].params[0]), "fc2.bias");  // reverse registration order
  EXPECT_EQ(sync.grad_bytes(), static_cast<uint64_t>(kNumel) * 4);
  for (const Bucket& b : sync.buckets())
    for (size_t s = 0; s < b.params.size(); ++s) {
      const at::Tensor& g = mlp->parameters()[b.params[s]].grad();
      EXPECT_TRUE(g.is_same(b.views[s]));
      EXPECT_TRUE(inside(g, b.buffer));
    }
}

// ---------------------------------------------------------------------------- hooks and order

TEST(GradSync, BucketsLaunchDuringBackwardInIndexOrder) {
  auto mlp = make_mlp(2);
  GradSync sync(C(), trainable(mlp), small_buckets());
  std::vector<size_t> order;
  bool in_backward = false;
  std::vector<bool> launched_in_backward;
  CommHook inner = allreduce_hook();
  sync.set_comm_hook([&](comm::Communicator& c, Bucket& b) {
    order.push_back(b.index);
    launched_in_backward.push_back(in_backward);
    return inner(c, b);
  });
  Data d = global_batch(10, 1);
  auto loss = loss_of(mlp, rows(d.x, 0), rows(d.y, 0));
  in_backward = true;
  loss.backward();
  in_backward = false;
  // The hook ran inside backward() for every bucket, before finish() was called.
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(launched_in_backward, (std::vector<bool>{true, true, true}));
  sync.finish();
  EXPECT_EQ(sync.last_stats().launched_in_backward, 3u);
  EXPECT_EQ(order.size(), 3u);  // finish() launched nothing more
  EXPECT_EQ(sync.grad_copies(), 0u);  // in-place path: autograd accumulated into the views
}

TEST(GradSync, UnusedParameterBucketLaunchesInFinishAndStaysZero) {
  auto mlp = make_mlp(3, /*extra_unused=*/true);
  auto ref = make_mlp(3, true);
  GradSync sync(C(), trainable(mlp), small_buckets());
  std::vector<size_t> order;
  CommHook inner = allreduce_hook();
  sync.set_comm_hook([&](comm::Communicator& c, Bucket& b) {
    order.push_back(b.index);
    return inner(c, b);
  });
  Data d = global_batch(11, 1);
  loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
  // The unused layer sits in bucket 0, which therefore never becomes ready during backward, and
  // nothing may launch ahead of it.
  EXPECT_TRUE(order.empty());
  sync.finish();
  EXPECT_EQ(order.size(), sync.buckets().size());
  for (size_t k = 0; k < order.size(); ++k) EXPECT_EQ(order[k], k);
  EXPECT_EQ(sync.last_stats().launched_in_backward, 0u);
  loss_of(ref, d.x, d.y).backward();
  auto params = mlp->named_parameters();
  EXPECT_EQ(params["unused.weight"].grad().abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(ref->named_parameters()["unused.weight"].grad().defined() == false ||
              ref->named_parameters()["unused.weight"].grad().abs().max().item<float>() == 0.0f);
  for (const char* name : {"fc0.weight", "fc1.bias", "fc2.weight"}) {
    auto g = params[name].grad(), r = ref->named_parameters()[name].grad();
    EXPECT_LE(((g - r).norm() / r.norm()).item<double>(), 1e-6) << name;
  }
}

// ---------------------------------------------------------------------------- equivalence

TEST(GradSync, EqualsSingleProcessGradientOfWholeBatch) {
  auto mlp = make_mlp(4), ref = make_mlp(4);
  GradSync sync(C(), trainable(mlp), small_buckets());
  torch::optim::SGD opt(mlp->parameters(), torch::optim::SGDOptions(0.1));
  torch::optim::SGD ref_opt(ref->parameters(), torch::optim::SGDOptions(0.1));
  for (int step = 0; step < 5; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    Data d = global_batch(100 + step, 1);
    sync.zero_grad();
    ref_opt.zero_grad();
    loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
    sync.finish();
    loss_of(ref, d.x, d.y).backward();
    EXPECT_LE(grad_rel_error(mlp, ref), 1e-6);
    opt.step();
    ref_opt.step();
    EXPECT_LE(param_rel_error(mlp, ref), 1e-6);
    EXPECT_EQ(sync.grad_copies(), 0u);
    // The in-place path: after backward + step, every .grad() still lives in its bucket.
    for (const Bucket& b : sync.buckets())
      for (size_t s = 0; s < b.params.size(); ++s)
        EXPECT_TRUE(inside(mlp->parameters()[b.params[s]].grad(), b.buffer));
  }
}

TEST(GradSync, CountsBytesAndCollectivesPerStep) {
  auto mlp = make_mlp(5);
  GradSync sync(C(), trainable(mlp), small_buckets());
  Data d = global_batch(12, 1);
  for (int step = 0; step < 2; ++step) {
    C().reset_counters();
    sync.zero_grad();
    loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
    sync.finish();
    const GradSyncStats& s = sync.last_stats();
    const uint64_t bytes = static_cast<uint64_t>(kNumel) * 4;
    EXPECT_EQ(s.bytes, bytes);
    EXPECT_EQ(s.collectives, sync.buckets().size());
    EXPECT_EQ(s.buckets, 3u);
    const uint64_t cap = static_cast<uint64_t>(kCapMb * 1024 * 1024);
    EXPECT_LE(s.collectives, (bytes + cap - 1) / cap + 1);
    // The communicator's own counters agree: all_reduce only, same calls and bytes.
    EXPECT_EQ(C().counters(comm::Collective::AllReduce).bytes, bytes);
    EXPECT_EQ(C().counters(comm::Collective::AllReduce).calls, s.collectives);
    EXPECT_EQ(C().total_counters().calls, s.collectives);
    EXPECT_GE(s.exposed_comm_s, 0.0);
  }
}

// A communicator that forwards to the test's MPI one but offers a stream timer, as NCCL does: finish()
// must start it before launching, stop it only after every Work's wait(), and report its seconds().
class StreamTimedComm final : public comm::Communicator {
 public:
  struct Log {
    std::vector<comm::WorkPtr> works;
    int started = 0;
    bool stopped_after_all_waits = false;
    bool read_after_stop = false;
  };
  class Timer final : public comm::StreamTimer {
   public:
    explicit Timer(Log& log) : log_(log) { ++log_.started; }
    void stop() override {
      bool all_done = !log_.works.empty();
      for (const auto& w : log_.works) all_done = all_done && w->is_completed();
      log_.stopped_after_all_waits = all_done;
      stopped_ = true;
    }
    double seconds() override {
      log_.read_after_stop = stopped_;
      return 0.125;
    }

   private:
    Log& log_;
    bool stopped_ = false;
  };

  explicit StreamTimedComm(comm::Communicator& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  int local_rank() const override { return inner_.local_rank(); }
  int local_size() const override { return inner_.local_size(); }
  std::string backend_name() const override { return "timed"; }
  comm::WorkPtr all_reduce(at::Tensor& t, const comm::AllReduceOptions& o) override {
    log.works.push_back(inner_.all_reduce(t, o));
    return log.works.back();
  }
  comm::WorkPtr broadcast(at::Tensor& t, const comm::BroadcastOptions& o) override { return inner_.broadcast(t, o); }
  comm::WorkPtr all_gather(const at::Tensor& in, at::Tensor& out) override { return inner_.all_gather(in, out); }
  comm::WorkPtr all_gather_v(const at::Tensor& in, at::Tensor& out, const std::vector<int64_t>& counts) override {
    return inner_.all_gather_v(in, out, counts);
  }
  comm::WorkPtr reduce_scatter(const at::Tensor& in, at::Tensor& out, const comm::ReduceScatterOptions& o) override {
    return inner_.reduce_scatter(in, out, o);
  }
  comm::WorkPtr barrier() override { return inner_.barrier(); }
  std::unique_ptr<comm::StreamTimer> start_stream_timer() override { return std::make_unique<Timer>(log); }

  Log log;

 private:
  comm::Communicator& inner_;
};

TEST(GradSync, ExposedCommIsTheStreamTimeWhereTheBackendOffersIt) {
  auto mlp = make_mlp(6);
  StreamTimedComm timed(C());
  GradSync sync(timed, trainable(mlp), small_buckets());
  Data d = global_batch(1, 3);
  sync.zero_grad();
  loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
  sync.finish();
  EXPECT_EQ(timed.log.started, 1);
  EXPECT_TRUE(timed.log.stopped_after_all_waits);
  EXPECT_TRUE(timed.log.read_after_stop);
  EXPECT_EQ(sync.last_stats().exposed_comm_s, 0.125);  // the timer's, not the host's wall time
  EXPECT_EQ(timed.log.works.size(), sync.buckets().size());
}

// ---------------------------------------------------------------------------- accumulation

TEST(GradSync, AccumulationSyncsOnlyOnTheLastMicroStep) {
  auto mlp = make_mlp(6), ref = make_mlp(6);
  GradSync sync(C(), trainable(mlp), small_buckets());
  Data d = global_batch(13, 2);
  C().reset_counters();
  sync.set_sync(false);
  (loss_of(mlp, rows(d.x, 0), rows(d.y, 0)) / 2).backward();
  EXPECT_EQ(C().total_counters().calls, 0u);  // nothing left this rank on the first micro-step
  sync.set_sync(true);
  (loss_of(mlp, rows(d.x, 1), rows(d.y, 1)) / 2).backward();
  EXPECT_EQ(C().total_counters().calls, 3u);  // all buckets launched during the last backward
  sync.finish();
  EXPECT_EQ(sync.last_stats().launched_in_backward, 3u);
  EXPECT_EQ(sync.last_stats().bytes, static_cast<uint64_t>(kNumel) * 4);
  loss_of(ref, d.x, d.y).backward();
  EXPECT_LE(grad_rel_error(mlp, ref), 1e-6);
}

TEST(GradSync, FinishAlsoSyncsWhenSyncWasOff) {
  auto mlp = make_mlp(7), ref = make_mlp(7);
  GradSync sync(C(), trainable(mlp), small_buckets());
  Data d = global_batch(14, 1);
  sync.set_sync(false);
  loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
  sync.finish();
  EXPECT_EQ(sync.last_stats().launched_in_backward, 0u);
  EXPECT_EQ(sync.last_stats().collectives, 3u);
  loss_of(ref, d.x, d.y).backward();
  EXPECT_LE(grad_rel_error(mlp, ref), 1e-6);
}

// ---------------------------------------------------------------------------- fallback paths

TEST(GradSync, CopiesInWhenAutogradReplacedTheGrad) {
  auto mlp = make_mlp(8), ref = make_mlp(8);
  GradSync sync(C(), trainable(mlp), small_buckets());
  Data d = global_batch(15, 1);
  // Setting a gradient to None (as zero_grad(set_to_none) does) makes autograd steal a fresh
  // tensor instead of accumulating in place: the hook must notice and copy it in.
  mlp->named_parameters()["fc1.weight"].mutable_grad() = at::Tensor();
  loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
  sync.finish();
  EXPECT_EQ(sync.grad_copies(), 1u);
  loss_of(ref, d.x, d.y).backward();
  EXPECT_LE(grad_rel_error(mlp, ref), 1e-6);
  const Bucket& b1 = sync.buckets()[1];
  EXPECT_TRUE(mlp->named_parameters()["fc1.weight"].grad().is_same(b1.views[1]));
}

TEST(GradSync, OptimizerZeroGradKeepsTheViews) {
  auto mlp = make_mlp(9);
  GradSync sync(C(), trainable(mlp), small_buckets());
  torch::optim::SGD opt(mlp->parameters(), torch::optim::SGDOptions(0.1));
  Data d = global_batch(16, 1);
  loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
  sync.finish();
  opt.step();
  opt.zero_grad(/*set_to_none=*/false);  // detach_() + zero_() on each grad: must work on our aliases
  for (const Bucket& b : sync.buckets()) EXPECT_EQ(b.buffer.abs().sum().item<float>(), 0.0f);
  loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
  sync.finish();
  EXPECT_EQ(sync.grad_copies(), 0u);
  // torch 2.x's default zero_grad() sets gradients to None: the next backward makes new tensors, which
  // the hooks copy into the buckets (slower, with a warning), and every gradient is a bucket view again.
  opt.step();
  opt.zero_grad();
  loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
  sync.finish();
  EXPECT_EQ(sync.grad_copies(), mlp->parameters().size());
  for (const Bucket& b : sync.buckets()) {
    for (size_t s = 0; s < b.params.size(); ++s) {
      EXPECT_TRUE(trainable(mlp)[b.params[s]].second.grad().is_same(b.views[s]));
    }
  }
}

// ---------------------------------------------------------------------------- compression

class GradSyncCompression : public ::testing::TestWithParam<Compression> {};

TEST_P(GradSyncCompression, CloseToFp32WithHalfTheBytes) {
  auto mlp = make_mlp(20), ref = make_mlp(20);
  GradSync sync(C(), trainable(mlp), small_buckets(GetParam()));
  Data d = global_batch(17, 1);
  C().reset_counters();
  loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
  sync.finish();
  loss_of(ref, d.x, d.y).backward();
  EXPECT_LE(grad_rel_error(mlp, ref), 1e-2);
  EXPECT_GT(grad_rel_error(mlp, ref), 0.0);  // it really went through 16 bits
  EXPECT_EQ(sync.last_stats().bytes, static_cast<uint64_t>(kNumel) * 2);
  EXPECT_EQ(C().counters(comm::Collective::AllReduce).bytes, static_cast<uint64_t>(kNumel) * 2);
  EXPECT_EQ(sync.last_stats().collectives, 3u);
  for (const auto& p : mlp->parameters()) EXPECT_EQ(p.grad().scalar_type(), at::kFloat);
}

INSTANTIATE_TEST_SUITE_P(Bf16Fp16, GradSyncCompression,
                         ::testing::Values(Compression::BF16, Compression::FP16),
                         [](const auto& info) { return std::string(compression_name(info.param)); });

// ---------------------------------------------------------------------------- dense sync (--fish.dense-sync)

// fc1.weight's 1,024 values stand for entries of a 5,000-element dense tensor at scattered positions
// (FISH's values over a mask): the dense hook moves the whole tensor, zeros included, and must give the
// gradients the plain hook gives, with (kNumel - 1024 + 5000) x 4 bytes on the wire.
TEST(GradSync, DenseScatterHookEqualsValuesOnlyWithDenseBytes) {
  constexpr int64_t kDense = 5000, kValues = kHidden * kHidden;
  auto mlp = make_mlp(40), twin = make_mlp(40);
  GradSync sync(C(), trainable(mlp), small_buckets());
  GradSync plain(C(), trainable(twin), small_buckets());
  size_t fc1 = 0;
  while (sync.param_name(fc1) != "fc1.weight") ++fc1;
  torch::manual_seed(7);  // the same positions on every rank
  const at::Tensor positions = std::get<0>(at::sort(at::randperm(kDense, at::kLong).narrow(0, 0, kValues)));
  sync.set_comm_hook(make_dense_scatter_hook({{fc1, DenseScatter{positions, kDense}}}));
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    Data d = global_batch(60 + step, 1);
    sync.zero_grad();
    plain.zero_grad();
    loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
    loss_of(twin, rows(d.x, 0), rows(d.y, 0)).backward();
    C().reset_counters();
    sync.finish();
    EXPECT_EQ(sync.last_stats().bytes, static_cast<uint64_t>(kNumel - kValues + kDense) * 4);
    EXPECT_EQ(sync.last_stats().collectives, 3u);
    plain.finish();
    EXPECT_EQ(plain.last_stats().bytes, static_cast<uint64_t>(kNumel) * 4);
    EXPECT_LE(grad_rel_error(mlp, twin), 1e-6);
    for (size_t k = 0; k < mlp->parameters().size(); ++k) {
      EXPECT_TRUE(mlp->parameters()[k].grad().allclose(twin->parameters()[k].grad(), 1e-6, 1e-7));
    }
  }
}

// ---------------------------------------------------------------------------- check_finite

TEST(GradSync, NonFiniteGradientOnOneRankThrowsOnEveryRank) {
  auto mlp = make_mlp(30);
  GradSyncOptions o = small_buckets();
  o.check_finite = true;
  GradSync sync(C(), trainable(mlp), o);
  const int bad_rank = C().size() > 1 ? 1 : 0;
  torch::Tensor bias = mlp->named_parameters()["fc1.bias"];
  if (C().rank() == bad_rank)
    bias.register_hook([](torch::Tensor g) { return g * std::numeric_limits<float>::quiet_NaN(); });
  Data d = global_batch(18, 1);
  loss_of(mlp, rows(d.x, 0), rows(d.y, 0)).backward();
  try {
    sync.finish();
    FAIL() << "finish() did not throw";
  } catch (const dt::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank " + std::to_string(bad_rank) + " in 'fc1.bias'"), std::string::npos)
        << what;
    EXPECT_EQ(what.find("more"), std::string::npos) << what;  // only that one tensor
  }
  // The step was reset: zero_grad() is allowed and a collective after it still matches.
  sync.zero_grad();
  at::Tensor one = at::ones({1});
  C().all_reduce(one)->wait();
  EXPECT_EQ(one.item<float>(), static_cast<float>(C().size()));
}

TEST(GradSync, RefusesNonFloatOrNonContiguousParameters) {
  auto half = torch::zeros({4}, torch::kHalf).requires_grad_(true);
  EXPECT_THROW(GradSync(C(), {{"h", half}}), dt::Error);
  auto t = torch::zeros({4, 3}).t().requires_grad_(true);
  EXPECT_THROW(GradSync(C(), {{"t", t}}), dt::Error);
}

// ---------------------------------------------------------------------------- then_work

// A Work whose wait() returns only once `waiters` threads are inside it, so they leave together.
class GateWork : public comm::Work {
 public:
  explicit GateWork(int waiters) : waiters_(waiters) {}
  bool is_completed() override { return true; }
  bool wait(std::chrono::milliseconds) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (++arrived_ == waiters_) cv_.notify_all();
    cv_.wait(lock, [&] { return arrived_ >= waiters_; });
    return true;
  }
  std::exception_ptr exception() const override { return nullptr; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiters_, arrived_ = 0;
};

// Two threads waiting on one Work (which comm/communicator.h allows): the continuation runs exactly
// once, and neither waiter returns before it has finished (its result is what both came for).
TEST(ThenWork, TwoWaitersRunTheContinuationOnceAndBothSeeItsResult) {
  for (int round = 0; round < 50; ++round) {
    std::atomic<int> runs{0};
    std::atomic<bool> result_ready{false};
    comm::WorkPtr work = then_work(std::make_shared<GateWork>(2), [&] {
      ++runs;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a slow decompression
      result_ready = true;
    });
    std::atomic<int> saw_result{0};
    auto waiter = [&] {
      work->wait();
      if (result_ready) ++saw_result;
    };
    std::thread a(waiter), b(waiter);
    a.join(), b.join();
    ASSERT_EQ(runs.load(), 1) << "round " << round;
    ASSERT_EQ(saw_result.load(), 2) << "round " << round;
  }
}

// Bytes are counted per Work: a wrapped Work reports its inner collective's payload, so GradSync's
// per-step bytes need no before/after difference of counters that other threads also move.
TEST(ThenWork, CarriesTheInnerCollectivesAccounting) {
  at::Tensor t = torch::ones({10});
  comm::WorkPtr inner = C().all_reduce(t);
  EXPECT_EQ(inner->payload_bytes(), 40u);
  EXPECT_EQ(inner->collectives(), 1u);
  comm::WorkPtr outer = then_work(inner, [] {});
  EXPECT_EQ(outer->payload_bytes(), 40u);
  EXPECT_EQ(outer->collectives(), 1u);
  outer->wait();
  EXPECT_FLOAT_EQ(t[0].item<float>(), static_cast<float>(C().size()));
  at::Tensor half = torch::ones({6}, torch::kHalf);
  comm::WorkPtr h = C().broadcast(half);
  EXPECT_EQ(h->payload_bytes(), 12u);
  h->wait();
}

TEST(GradSync, ParseCompression) {
  EXPECT_EQ(parse_compression("none"), Compression::None);
  EXPECT_EQ(parse_compression("bf16"), Compression::BF16);
  EXPECT_EQ(parse_compression("fp16"), Compression::FP16);
  EXPECT_THROW(parse_compression("int8"), dt::UsageError);
}

}  // namespace
}  // namespace dt::dist
