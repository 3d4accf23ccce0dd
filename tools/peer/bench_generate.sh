#!/usr/bin/env bash
# Generation throughput, ours against HF `generate`, on the same 20M checkpoint in the same run.
# Usage: tools/peer/bench_generate.sh [BATCH PROMPT_LEN NEW_TOKENS]   (after scripts/setup)
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
python -c "import transformers" 2>/dev/null || pip install -q -r tools/requirements.txt
B=${1:-16}; L=${2:-32}; N=${3:-64}
MODEL=runs/bench-20m
[ -f "$MODEL/model.safetensors" ] || target/release/rlhf init --preset bench-20m --out "$MODEL" --seed 0
ours=$(target/release/rlhf bench generate --model "$MODEL" --batch "$B" --prompt-len "$L" --new-tokens "$N" --device cpu)
peer=$(python tools/peer/hf_generate_bench.py --model "$MODEL" --batch "$B" --prompt-len "$L" --new-tokens "$N" 2>/dev/null | tail -1)
echo "ours: $ours"
echo "peer: $peer"
python - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"ours_tokens_per_s": round(o["tokens_per_s"], 1), "hf_tokens_per_s": round(p["tokens_per_s"], 1),
                  "ratio": round(o["tokens_per_s"] / p["tokens_per_s"], 2)}))
PY
