// comm/nccl.h — the NCCL backend (CUDA tensors), bootstrapped from MPI.
//
// Design note (after llm.c's zero.cuh): rank 0 makes the ncclUniqueId and broadcasts it over MPI,
// then every rank calls ncclCommInitRank on the GPU of its local rank. Collectives run on a dedicated
// CUDA stream that first waits on an event recorded on the compute stream (no host sync); each Work is
// backed by a CUDA event recorded after the collective. A watchdog thread aborts the NCCL communicator
// and calls MPI_Abort when a collective exceeds the timeout, so a dead peer never hangs a job.
// Work::wait() with no timeout makes the caller's current CUDA stream wait on that event (no host
// sync, as in c10d): kernels and copies issued afterwards see the result. wait(timeout > 0) and
// is_completed() query the event from the host.
// Compiled only when DELTATUNE_NCCL is on; it builds and links on machines without a GPU.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace dt::comm {

struct NcclOptions {
  int device = -1;  // CUDA device; -1: the local rank modulo the visible devices
  std::chrono::seconds watchdog_timeout{600};
};

// `bootstrap` is an MPI communicator over the same ranks; it carries the unique id.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap,
                                                     const NcclOptions& options = {});

// Whether this binary was built with the NCCL backend.
bool nccl_available();

// NCCL needs a GPU of its own for every rank: two ranks on one GPU fail in ncclCommInitRank
// ("Duplicate GPU detected"). Collective over `bootstrap`: every rank passes the CUDA device it will
// use (-1: none); the result, the same on every rank, is empty when NCCL can run, otherwise why not.
// GPUs are told apart by host and PCI bus id, so ranks that each see one GPU through
// CUDA_VISIBLE_DEVICES (srun --gpus-per-task=1) are told apart too.
std::string gpu_sharing_problem(Communicator& bootstrap, int device);
// The rule itself, on every rank's "host/bus id" ("" for a rank without a GPU).
std::string describe_gpu_sharing(const std::vector<std::string>& gpu_ids);

}  // namespace dt::comm
