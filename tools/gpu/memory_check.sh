#!/usr/bin/env bash
# The GPU check of the memory issue (14), for a session the `device` tool lends a GPU to; one run
# of a few minutes on an H200. Run from the repository root on the GPU machine with the release
# binary built here and carried over:
#   LD_LIBRARY_PATH=$(python3 -c 'import torch; print(torch.__path__[0])')/lib bash tools/gpu/memory_check.sh
# 1. One SFT step of a random 7B-shaped model in bf16 with activation checkpointing at micro-batch
#    1 x 4096: tokens/s, MFU against the GPU's dense bf16 peak (PEAK_TFLOPS, default 989 for an
#    H100/H200 SXM), and the device memory peak sampled by nvidia-smi every 50 ms (an upper bound
#    of libtorch's max_memory_allocated: it includes the caching allocator's reserve), beside the
#    planner's figure for the same shape (`rlhf plan`, optimizer on the device).
# 2. Decode: batch-16 `rlhf bench generate` on the same shape.
# Writes $OUT/summary.json and prints it; exits non-zero when a run fails.
set -euo pipefail
BIN=${BIN:-target/release/rlhf}
OUT=${OUT:-/tmp/memory_check}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
rm -rf "$OUT" && mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

peak_during() { # peak_during FILE CMD... : runs CMD, samples memory.used (MiB) into FILE
  local file=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$file" &
  local smi=$!
  "$@"
  local rc=$?
  kill "$smi" 2>/dev/null || true
  return $rc
}

peak_during "$OUT/sft_mem.txt" "$BIN" bench sft --preset 7b --device cuda --dtype bfloat16 --batch 1 --seq-len 4096 \
  --prompt-len 2048 --steps 3 --warmup 1 --gradient-checkpointing > "$OUT/sft.json"
cat > "$OUT/sft.toml" <<TOML
init_preset = "7b"
train_data = ["unused.jsonl"]
max_seq_len = 4096
[train]
micro_batch_size = 1
grad_accumulation = 1
device = "cuda"
dtype = "bfloat16"
gradient_checkpointing = true
TOML
"$BIN" plan --stage sft --config "$OUT/sft.toml" --preset 7b --gpu-memory 141GiB | tail -1 > "$OUT/plan.json"
"$BIN" bench generate --preset 7b --device cuda --dtype bfloat16 --batch 16 --prompt-len 128 --new-tokens 128 --repeats 3 > "$OUT/decode16.json"

python3 - "$OUT" "$PEAK_TFLOPS" <<'PY'
import json, sys, os
out, peak = sys.argv[1], float(sys.argv[2])
sft = json.load(open(os.path.join(out, "sft.json")))
plan = json.load(open(os.path.join(out, "plan.json")))
mem = [int(l) for l in open(os.path.join(out, "sft_mem.txt")) if l.strip().isdigit()]
params = 6.74e9
tps = sft.get("tokens_per_s", 0.0)
summary = {
    "gpu": open(os.path.join(out, "gpu.txt")).read().strip(),
    "sft_tokens_per_s": tps,
    # 6·N FLOPs per token for forward + backward, plus one more forward (2·N) for the recomputation.
    "sft_mfu": tps * 8 * params / (peak * 1e12),
    "sft_mfu_without_recompute_flops": tps * 6 * params / (peak * 1e12),
    "device_peak_nvidia_smi_bytes": max(mem) * 2**20 if mem else None,
    "planner_device_peak_bytes": plan.get("device_peak_bytes"),
    "decode16": json.load(open(os.path.join(out, "decode16.json"))),
}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(summary))
PY
