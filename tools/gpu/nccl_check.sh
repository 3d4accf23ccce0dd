#!/usr/bin/env bash
# The GPU check of the distributed issue, for a session the `device` tool lends a GPU to: SFT and
# reward-model steps with c10d's NCCL backend at world size 1 (one GPU cannot hold two NCCL ranks),
# launched by torchrun as users launch. Run from the repository root on the GPU machine, with the
# release binary built here and carried over:
#   LD_LIBRARY_PATH=$(python3 -c 'import torch; print(torch.__path__[0])')/lib bash tools/gpu/nccl_check.sh
# Prints the lines that say which backend each run used and their outcome; exits non-zero on failure.
set -euo pipefail
BIN=${BIN:-target/release/rlhf}
OUT=${OUT:-/tmp/nccl_check}
rm -rf "$OUT" && mkdir -p "$OUT"
run() { RLHF_DIST_BACKEND=nccl RLHF_DIST_TIMEOUT=120 python3 -m torch.distributed.run --no-python --nproc-per-node 1 "$BIN" "$@"; }
"$BIN" data demo --sft 64 --pairs 64 --prompts 8 --out "$OUT/data" > /dev/null
"$BIN" init --preset micro --seed 3 --out "$OUT/base" > /dev/null
cat > "$OUT/sft.toml" <<TOML
init_preset = "micro"
train_data = ["$OUT/data/sft.jsonl"]
eval_fraction = 0.1
max_seq_len = 64
[train]
lr = 1e-3
micro_batch_size = 4
grad_accumulation = 2
max_steps = 4
device = "cuda"
zero_stage = 2
TOML
cat > "$OUT/rm.toml" <<TOML
model = "$OUT/base"
train_data = ["$OUT/data/preference_train.jsonl"]
eval_data = ["$OUT/data/preference_test.jsonl"]
max_seq_len = 48
[train]
lr = 1e-3
micro_batch_size = 4
grad_accumulation = 2
max_steps = 4
device = "cuda"
TOML
run sft --config "$OUT/sft.toml" --out "$OUT/sft" 2>&1 | tee "$OUT/sft.log" | grep -E "data-parallel|error" || true
run reward train --config "$OUT/rm.toml" --out "$OUT/rm" 2>&1 | tee "$OUT/rm.log" | grep -E "data-parallel|error" || true
grep -q "(nccl)" "$OUT/sft.log" && grep -q "(nccl)" "$OUT/rm.log" && test -s "$OUT/sft/summary.json" && test -s "$OUT/rm/summary.json"
echo "nccl_check: ok (SFT and RM steps on cuda:0 with the NCCL backend)"
