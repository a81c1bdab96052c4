// tests/dist/test_checkpoint_dist.cpp — the collective side of checkpoints over 2 and 4 ranks: every
// rank's RNG state reaches the file and comes back to its rank; a failed write or a mismatch throws
// on every rank (nobody hangs); a signal on one rank is agreed by all.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "dist/checkpoint.h"
#include "tests/mpi_test_util.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace dt::dist {
namespace {

// The same directory on every rank (rank 0 makes it, the name is broadcast as bytes).
std::string shared_dir(comm::Communicator& comm, const std::string& tag) {
  at::Tensor name = at::zeros({64}, at::kLong);
  if (comm.rank() == 0) {
    std::string pattern = (fs::temp_directory_path() / ("dt-ckptd-" + tag + "-XXXXXX")).string();
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    std::memcpy(name.data_ptr<int64_t>(), pattern.c_str(), pattern.size() + 1);
  }
  comm.broadcast(name)->wait();
  return std::string(reinterpret_cast<const char*>(name.data_ptr<int64_t>()));
}

CheckpointState run_state(int64_t step) {
  CheckpointState s;
  s.step = step;
  s.method = "lora(r=4)";
  s.backbone.name = "tiny";
  s.optimizer = "adamw";
  s.trainables = {{"a", at::arange(12, at::kFloat).reshape({3, 4}) * step}};
  s.optimizer_state = {{"a.step", at::full({}, step, at::kLong)}};
  s.config_ini = "method = lora\n";
  return s;
}

TEST(CheckpointDist, EveryRanksRngStateRoundTrips) {
  auto& comm = testing::test_comm();
  const std::string dir = shared_dir(comm, "rng");
  at::manual_seed(1000 + comm.rank());  // a different generator state on every rank
  const auto mine = capture_rng_state();
  const std::string path = save_checkpoint(comm, dir, run_state(4), 2);
  EXPECT_EQ(path, dir + "/ckpt-00000004.h5");
  at::randn({100});  // move the generator on
  const CheckpointState expected = run_state(4);
  const auto point = resume_checkpoint(comm, "auto", dir, &expected);
  ASSERT_TRUE(point.has_value());
  EXPECT_EQ(point->state.step, 4);
  ASSERT_EQ(point->state.rng_states.size(), static_cast<size_t>(comm.size()));
  EXPECT_EQ(point->state.rng_states[comm.rank()], mine);
  restore_rng_state(point->state.rng_states[comm.rank()]);
  EXPECT_EQ(capture_rng_state(), mine);
  comm.barrier()->wait();
  if (comm.rank() == 0) fs::remove_all(dir);
}

TEST(CheckpointDist, AutoWithNoCheckpointStartsFreshOnEveryRank) {
  auto& comm = testing::test_comm();
  const std::string dir = shared_dir(comm, "empty");
  const CheckpointState expected = run_state(1);
  EXPECT_FALSE(resume_checkpoint(comm, "auto", dir, &expected).has_value());
  EXPECT_THROW(resume_checkpoint(comm, "auto", "", &expected), UsageError);
  EXPECT_THROW(resume_checkpoint(comm, dir + "/nope.h5", dir, &expected), UsageError);
  comm.barrier()->wait();
  if (comm.rank() == 0) fs::remove_all(dir);
}

TEST(CheckpointDist, MismatchThrowsTheSameErrorOnEveryRank) {
  auto& comm = testing::test_comm();
  const std::string dir = shared_dir(comm, "mismatch");
  save_checkpoint(comm, dir, run_state(2), 0);
  CheckpointState other = run_state(2);
  other.method = "ia3";
  try {
    resume_checkpoint(comm, dir, "", &other);  // a directory: searched like auto
    ADD_FAILURE() << "mismatch not refused";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("method 'lora(r=4)' in the checkpoint, 'ia3' in this run"), std::string::npos);
  }
  // Without `expected` (train's --fish.refresh-every reads the stored mask before the method exists):
  // no validation, and every rank holds the file rank 0 chose.
  save_checkpoint(comm, dir, run_state(3), 0);
  const auto point = resume_checkpoint(comm, dir, "", nullptr);
  ASSERT_TRUE(point.has_value());
  EXPECT_EQ(point->path, dir + "/ckpt-00000003.h5");
  EXPECT_EQ(point->state.step, 3);
  comm.barrier()->wait();
  if (comm.rank() == 0) fs::remove_all(dir);
}

TEST(CheckpointDist, FailedWriteThrowsOnEveryRank) {
  auto& comm = testing::test_comm();
  const std::string dir = shared_dir(comm, "fail");
  // A file where the directory should be: rank 0 cannot create it.
  if (comm.rank() == 0) std::ofstream(dir + "/blocked") << "x";
  comm.barrier()->wait();
  EXPECT_THROW(save_checkpoint(comm, dir + "/blocked/sub", run_state(3), 1), Error);
  comm.barrier()->wait();
  if (comm.rank() == 0) fs::remove_all(dir);
}

TEST(CheckpointDist, ASignalOnTheLastRankIsAgreedByAll) {
  auto& comm = testing::test_comm();
  install_preemption_handlers();
  EXPECT_FALSE(preemption_agreed(comm));
  if (comm.rank() == comm.size() - 1) std::raise(SIGUSR1);
  EXPECT_EQ(preemption_requested(), comm.rank() == comm.size() - 1);
  EXPECT_TRUE(preemption_agreed(comm));
}

}  // namespace
}  // namespace dt::dist
