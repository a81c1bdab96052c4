// comm/nccl_disabled.cpp — stands in for comm/nccl.cpp when deltatune is built without NCCL.
#include "comm/nccl.h"
#include "util/error.h"

namespace dt::comm {

std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, const NcclOptions&) {
  DT_FAIL("deltatune was built without NCCL (configure with -DDELTATUNE_NCCL=ON and CUDAToolkit/NCCL)",
          "use --dist.backend mpi");
}

bool nccl_available() { return false; }

std::string gpu_sharing_problem(Communicator&, int) { return "this deltatune was built without NCCL"; }

}  // namespace dt::comm
