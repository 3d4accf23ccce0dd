#!/usr/bin/env bash
# Rollout throughput: static vs continuous batching (`rlhf bench rollout`) and HF `generate` on the
# same prompts, back to back in one run. Usage (after scripts/setup and `cargo build --release`):
#   tools/peer/bench_rollout.sh MODEL_DIR [extra `rlhf bench rollout` flags...]
# HF_THREADS=N sets HF's intra-op threads (default: all cores; on a loaded machine 1 is faster).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
MODEL=$1; shift
TMP=$(mktemp -d)
ours=$(target/release/rlhf bench rollout --model "$MODEL" --device cpu --dump-prompts "$TMP/prompts.json" "$@")
peer=$(python tools/peer/hf_rollout_bench.py --model "$MODEL" --prompts "$TMP/prompts.json" ${HF_THREADS:+--threads "$HF_THREADS"} 2>/dev/null | tail -1)
echo "ours: $ours"
echo "peer: $peer"
python - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
r = lambda x: round(x, 1)
print(json.dumps({"static_tok_s": r(o["static"]["tokens_per_s"]), "continuous_tok_s": r(o["continuous"]["tokens_per_s"]),
                  "hf_tok_s": r(p["tokens_per_s"]), "continuous_over_static": round(o["continuous_over_static"], 2),
                  "continuous_over_hf": round(o["continuous"]["tokens_per_s"] / p["tokens_per_s"], 2),
                  "useful_static": round(o["static"]["useful_fraction"], 3), "useful_continuous": round(o["continuous"]["useful_fraction"], 3),
                  "useful_hf": round(p["useful_fraction"], 3)}))
PY
rm -rf "$TMP"
