// Option parsing, config files, --print-config and the launcher/MPI cross-check.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>

#include "comm/nccl.h"
#include "launch/cli.h"
#include "launch/session.h"
#include "util/error.h"

using namespace dt::launch;
namespace comm = dt::comm;

namespace {

Subcommand test_subcommand() {
  Subcommand sub;
  sub.name = "test";
  sub.add_options = [](po::options_description& desc) {
    add_common_options(desc);
    add_train_options(desc);
    add_dist_options(desc);
  };
  return sub;
}

po::variables_map parse(const std::vector<std::string>& args, po::options_description* out = nullptr) {
  const Subcommand sub = test_subcommand();
  po::options_description desc;
  sub.add_options(desc);
  auto vm = parse_options(sub, desc, args);
  if (out) out->add(desc);
  return vm;
}

std::string write_temp(const std::string& text) {
  char name[] = "/tmp/deltatune-test-XXXXXX";
  const int fd = mkstemp(name);
  EXPECT_GE(fd, 0);
  close(fd);
  std::ofstream(name) << text;
  return name;
}

}  // namespace

TEST(Options, DefaultsAndCommandLine) {
  auto vm = parse({"--train.lr", "0.5", "--dist.bucket-mb", "4"});
  EXPECT_DOUBLE_EQ(vm["train.lr"].as<double>(), 0.5);
  EXPECT_DOUBLE_EQ(vm["dist.bucket-mb"].as<double>(), 4.0);
  EXPECT_EQ(vm["train.steps"].as<int64_t>(), 200);
}

TEST(Options, ConfigFileSectionsAndCommandLineWins) {
  const std::string path = write_temp("[train]\nlr = 0.25\nsteps = 7\n[dist]\ncompress = bf16\n");
  auto vm = parse({"--config", path, "--train.steps", "9"});
  EXPECT_DOUBLE_EQ(vm["train.lr"].as<double>(), 0.25);        // from the file
  EXPECT_EQ(vm["train.steps"].as<int64_t>(), 9);              // command line wins
  EXPECT_EQ(vm["dist.compress"].as<std::string>(), "bf16");
  std::remove(path.c_str());
}

TEST(Options, BadInputIsAUsageErrorNamingTheCause) {
  try {
    parse({"--train.nonsense", "1"});
    FAIL() << "unknown option accepted";
  } catch (const dt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("train.nonsense"), std::string::npos) << e.what();
  }
  try {
    parse({"--train.lr", "fast"});
    FAIL() << "bad value accepted";
  } catch (const dt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("train.lr"), std::string::npos) << e.what();
  }
  try {
    parse({"--config", "/nonexistent/deltatune.ini"});
    FAIL() << "missing config accepted";
  } catch (const dt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/deltatune.ini"), std::string::npos) << e.what();
  }
  const std::string path = write_temp("[train]\nbogus = 1\n");
  try {
    parse({"--config", path});
    FAIL() << "unknown key in config accepted";
  } catch (const dt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("train.bogus"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

TEST(Options, PrintedConfigParsesBackToTheSameValues) {
  po::options_description desc;
  auto vm = parse({"--train.lr", "0.125", "--dist.compress", "fp16", "--log-all-ranks"}, &desc);
  const std::string ini = render_config(desc, vm);
  EXPECT_NE(ini.find("[train]\n"), std::string::npos) << ini;
  EXPECT_NE(ini.find("lr = 0.125\n"), std::string::npos) << ini;
  const std::string path = write_temp(ini);
  auto again = parse({"--config", path});
  EXPECT_DOUBLE_EQ(again["train.lr"].as<double>(), 0.125);
  EXPECT_EQ(again["dist.compress"].as<std::string>(), "fp16");
  EXPECT_TRUE(again["log-all-ranks"].as<bool>());
  EXPECT_EQ(render_config(desc, again), ini);
  std::remove(path.c_str());
}

TEST(LauncherEnv, AgreementAndDisagreement) {
  std::map<std::string, std::string> env = {{"OMPI_COMM_WORLD_RANK", "1"},
                                            {"OMPI_COMM_WORLD_SIZE", "2"},
                                            {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                            {"OMPI_MCA_orte_hnp_uri", "x"},
                                            {"SLURM_PROCID", "0"},  // the daemon's, under mpirun: ignored
                                            {"SLURM_STEP_ID", "0"}};
  auto getter = [&](const char* n) -> const char* {
    auto it = env.find(n);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  EXPECT_EQ(check_launcher_env(read_launcher_env(getter), 1, 2, 1), "");
  EXPECT_NE(check_launcher_env(read_launcher_env(getter), 0, 2, 0).find("Open MPI"), std::string::npos);

  // srun without PMIx: every process is a singleton, Slurm knows better.
  env = {{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "1"}, {"SLURM_STEP_ID", "0"}};
  const std::string msg = check_launcher_env(read_launcher_env(getter), 0, 1, 0);
  EXPECT_NE(msg.find("Slurm"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rank 3 of 4"), std::string::npos) << msg;
  EXPECT_EQ(check_launcher_env(read_launcher_env(getter), 3, 4, 1), "");

  env = {{"RANK", "0"}, {"WORLD_SIZE", "8"}};
  EXPECT_NE(check_launcher_env(read_launcher_env(getter), 0, 2, 0).find("WORLD_SIZE"), std::string::npos);
}

TEST(Threads, SplitTheNodeAmongLocalRanks) {
  EXPECT_EQ(default_threads(2, 2), 1);
  EXPECT_EQ(default_threads(2, 4), 1);
  EXPECT_EQ(default_threads(16, 4), 4);
  EXPECT_EQ(default_threads(16, 1), 16);
  // On a GPU the host only launches kernels and collates batches: at most kMaxThreadsOnGpu.
  EXPECT_EQ(default_threads(16, 1, /*on_gpu=*/true), kMaxThreadsOnGpu);
  EXPECT_EQ(default_threads(16, 8, /*on_gpu=*/true), 2);
  EXPECT_GE(usable_cores(), 1);
}

TEST(Device, ResolvesCpuCudaAuto) {
  EXPECT_EQ(resolve_device("cpu", 0, 4), c10::Device(c10::kCPU));
  EXPECT_EQ(resolve_device("auto", 0, 0), c10::Device(c10::kCPU));
  EXPECT_EQ(resolve_device("auto", 3, 2), c10::Device(c10::kCUDA, 1));  // local rank 3 of 2 GPUs
  EXPECT_EQ(resolve_device("cuda", 1, 4), c10::Device(c10::kCUDA, 1));
  try {
    resolve_device("cuda", 0, 0);
    ADD_FAILURE() << "--device cuda without a GPU was accepted";
  } catch (const dt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--device cuda: no GPU is visible"), std::string::npos) << e.what();
  }
  EXPECT_THROW(resolve_device("gpu", 0, 1), dt::UsageError);
}

TEST(Device, NcclOnlyWithAGpuPerRank) {
  EXPECT_EQ(comm::describe_gpu_sharing({"a/0000:01:00.0", "a/0000:02:00.0", "b/0000:01:00.0"}), "");
  // Two ranks on one GPU: NCCL's "Duplicate GPU detected", said before NCCL says it.
  const std::string shared = comm::describe_gpu_sharing({"a/0000:01:00.0", "a/0000:01:00.0"});
  EXPECT_NE(shared.find("ranks 0 and 1 share GPU a/0000:01:00.0"), std::string::npos) << shared;
  EXPECT_NE(shared.find("Duplicate GPU detected"), std::string::npos) << shared;
  EXPECT_NE(comm::describe_gpu_sharing({"a/0000:01:00.0", ""}).find("rank(s) 1 have no GPU"), std::string::npos);
}
