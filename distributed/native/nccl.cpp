// The NCCL process group (c10d::ProcessGroupNCCL, in libtorch_cuda), for CUDA tensors. Compiled
// only when build.rs finds the CUDA runtime, CRT, CCCL and NCCL headers (scripts/setup installs
// the header wheels beside torch's); otherwise nccl_stub.cpp answers that it is not built in.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <cstdlib>
#include <string>

#include "bridge.h"

extern "C" {

int rlhf_c10d_nccl_available() { return 1; }

int rlhf_c10d_nccl_new(void* store, const char* prefix, int rank, int size, int64_t timeout_ms, void** out, char** err) {
  return rlhf_c10d::guarded(err, [&] {
    // A collective's wait blocks the host until it completes or the timeout passes (so a dead or
    // hung rank is an error here, named by the caller), instead of only ordering the streams.
    setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), static_cast<rlhf_c10d::Store*>(store)->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg_store, rank, size, opts);
    *out = new rlhf_c10d::Group{pg, rank, size};
  });
}

}  // extern "C"
