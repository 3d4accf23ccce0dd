// Kernels tch 0.24 has no binding for, behind the same C ABI conventions as bridge.cpp (0 or 1
// with a malloc'd message; no exception crosses into Rust).
//
// rlhf_flash_varlen: variable-length FlashAttention over packed sequences,
// `at::_flash_attention_forward` with cumulative sequence lengths. Called through the dispatcher,
// so autograd records it (its backward is `_flash_attention_backward`) like any other ATen op.
// CUDA only (fp16/bf16); grouped-query heads are native to the kernel (K/V with fewer heads).
#include <ATen/ATen.h>

#include "bridge.h"

#include <optional>
#include <stdexcept>

using rlhf_c10d::guarded;

extern "C" {

// q `[N, H, hd]`, k and v `[N, KV, hd]` (N tokens of all sequences back to back), `cu_seqlens`
// int32 `[S + 1]` (sequence s is tokens cu[s]..cu[s+1]), `max_len` the longest sequence; causal
// attention within each sequence. `*out` receives a new `at::Tensor*` `[N, H, hd]`.
int rlhf_flash_varlen(const void* q, const void* k, const void* v, const void* cu_seqlens, int64_t max_len, double scale, void** out,
                      char** err) {
  return guarded(err, [&] {
    const auto& cu = *static_cast<const at::Tensor*>(cu_seqlens);
    auto result = at::_flash_attention_forward(*static_cast<const at::Tensor*>(q), *static_cast<const at::Tensor*>(k),
                                               *static_cast<const at::Tensor*>(v), cu, cu, max_len, max_len, 0.0, /*is_causal=*/true,
                                               /*return_debug_mask=*/false, scale);
    *out = new at::Tensor(std::get<0>(result));
  });
}

// Drops a variable's gradient (PyTorch's `zero_grad(set_to_none=True)`): the next backward
// allocates a fresh one, so gradients take memory only between a backward and the update.
int rlhf_release_grad(void* tensor, char** err) {
  return guarded(err, [&] { static_cast<at::Tensor*>(tensor)->mutable_grad().reset(); });
}

}  // extern "C"
