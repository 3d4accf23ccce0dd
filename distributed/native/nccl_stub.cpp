// Built when the CUDA/NCCL headers are absent: the NCCL process group is not available, and
// CUDA tensors go through the Gloo group via host memory.
#include <cstdint>

#include "bridge.h"

extern "C" {

int rlhf_c10d_nccl_available() { return 0; }

int rlhf_c10d_nccl_new(void*, const char*, int, int, int64_t, void**, char** err) {
  *err = rlhf_c10d::dup_message("this build has no NCCL: the CUDA and NCCL headers were not found when it was compiled (see scripts/setup)");
  return 1;
}

}  // extern "C"
