// tests/mpi_main.cpp — GoogleTest main for tests that run on several ranks (mpirun -np N).
//
// Design note: each rank runs the whole suite. After every test the ranks exchange a pass/fail flag,
// so a failure on any rank fails the run on every rank, and rank 0 says which ranks failed which test
// (an assertion seen only on rank 3 would otherwise scroll by in rank 3's interleaved output).
// Only rank 0 keeps GoogleTest's printer; other ranks print their own failures and nothing else.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "comm/mpi.h"
#include "tests/mpi_test_util.h"
#include "util/error.h"
#include "util/log.h"

namespace dt::testing {
namespace {

comm::Communicator* g_test_comm = nullptr;

// Prints failures of a non-zero rank, prefixed with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::cerr << "[rank " << rank_ << "] " << (r.file_name() ? r.file_name() : "?") << ":"
              << r.line_number() << ": Failure\n"
              << r.message() << std::endl;
  }

 private:
  int rank_;
};

// After each test, gathers every rank's outcome; remembers the tests that failed anywhere.
class RankSync : public ::testing::EmptyTestEventListener {
 public:
  explicit RankSync(comm::Communicator& comm) : comm_(comm) {}

  void OnTestEnd(const ::testing::TestInfo& info) override {
    at::Tensor mine = at::full({1}, info.result()->Failed() ? 1 : 0, at::kInt);
    at::Tensor all = at::zeros({comm_.size()}, at::kInt);
    comm_.all_gather(mine, all)->wait();
    std::string ranks;
    for (int r = 0; r < comm_.size(); ++r) {
      if (all[r].item<int>() == 0) continue;
      ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
    }
    if (ranks.empty()) return;
    const std::string name = std::string(info.test_suite_name()) + "." + info.name();
    failed_.push_back(name + " (ranks " + ranks + ")");
    if (comm_.rank() == 0) std::cout << "[  RANKS   ] " << name << " failed on ranks " << ranks << std::endl;
  }

  const std::vector<std::string>& failed() const { return failed_; }

 private:
  comm::Communicator& comm_;
  std::vector<std::string> failed_;
};

}  // namespace

comm::Communicator& test_comm() {
  DT_CHECK(g_test_comm != nullptr, "test_comm() used outside tests/mpi_main.cpp's main");
  return *g_test_comm;
}

}  // namespace dt::testing

int main(int argc, char** argv) {
  using namespace dt;
  comm::MpiRuntime runtime(&argc, &argv);
  int failed_anywhere = 0;
  {
    auto sync_comm = comm::make_mpi_communicator();
    auto shared_comm = comm::make_mpi_communicator();
    dt::testing::g_test_comm = shared_comm.get();
    const int rank = sync_comm->rank();
    set_error_context(rank, sync_comm->size());
    log::configure(rank, sync_comm->size(), /*all_ranks=*/false);

    ::testing::InitGoogleTest(&argc, argv);
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    if (rank != 0) {
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new dt::testing::FailurePrinter(rank));
    }
    auto* sync = new dt::testing::RankSync(*sync_comm);
    listeners.Append(sync);  // owned by GoogleTest from here

    const int local = RUN_ALL_TESTS();
    // Failures outside tests (e.g. in a suite's set-up) count too.
    at::Tensor flag = at::full({1}, (local != 0 || !sync->failed().empty()) ? 1 : 0, at::kInt);
    sync_comm->all_reduce(flag)->wait();
    failed_anywhere = flag.item<int>();
    if (rank == 0 && failed_anywhere) {
      std::cout << "[  RANKS   ] " << sync->failed().size() << " test(s) failed on some rank";
      for (const auto& f : sync->failed()) std::cout << "\n[  RANKS   ]   " << f;
      std::cout << std::endl;
    }
    dt::testing::g_test_comm = nullptr;
  }
  return failed_anywhere ? 1 : 0;
}
