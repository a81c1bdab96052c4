// tests/mpi_test_util.h — what multi-rank tests share with their main (tests/mpi_main.cpp).
//
// Design note: the main owns MPI and one MPI communicator that every test may use; it keeps a second,
// private one for gathering results, so tests can assert exact counters on theirs. Every rank runs
// every test in the same order, so collectives inside tests match across ranks.
#pragma once

#include "comm/communicator.h"

namespace dt::testing {

// The shared MPI communicator over all ranks of the test run (backend "mpi").
comm::Communicator& test_comm();

}  // namespace dt::testing
