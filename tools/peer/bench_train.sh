#!/usr/bin/env bash
# Training throughput, ours against the Python peers, back to back in one run on the same checkpoint.
# Usage: tools/peer/bench_train.sh [sft|reward|both]   (after scripts/setup; run on an otherwise idle machine)
#   sft:    `rlhf bench sft`    vs tools/peer/sft_bench.py --mode plain and --mode trl (tokens/s)
#   reward: `rlhf bench reward` vs tools/peer/rm_bench.py  --mode plain and --mode trl (pairs/s)
# Prints each raw JSON line, then one summary line per stage with the ratios and the 1-min load average.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
python -c "import trl" 2>/dev/null || pip install -q -r tools/requirements.txt
WHAT=${1:-both}
MODEL=runs/bench-20m
[ -f "$MODEL/model.safetensors" ] || target/release/rlhf init --preset bench-20m --out "$MODEL" --seed 0

run_one() { # stage unit
  local stage=$1 unit=$2 peer
  [ "$stage" = sft ] && peer=tools/peer/sft_bench.py || peer=tools/peer/rm_bench.py
  local load0; load0=$(cut -d' ' -f1 /proc/loadavg)
  local ours plain trl
  ours=$(target/release/rlhf bench "$stage" --model "$MODEL" --device cpu --threads 2 | tail -1)
  plain=$(python "$peer" --model "$MODEL" --mode plain --threads 2 2>/dev/null | tail -1)
  trl=$(python "$peer" --model "$MODEL" --mode trl --threads 2 2>/dev/null | tail -1)
  echo "$stage ours:  $ours"
  echo "$stage plain: $plain"
  echo "$stage trl:   $trl"
  python - "$stage" "$unit" "$load0" "$ours" "$plain" "$trl" <<'PY'
import json, sys
stage, unit, load0 = sys.argv[1], sys.argv[2], sys.argv[3]
o, p, t = (json.loads(a) for a in sys.argv[4:7])
load1 = open("/proc/loadavg").read().split()[0]
print(json.dumps({"stage": stage, "unit": unit, "ours": round(o[unit], 2), "plain": round(p[unit], 2),
                  "trl": round(t[unit], 2), "vs_plain": round(o[unit] / p[unit], 2),
                  "vs_trl": round(o[unit] / t[unit], 2), "load_before": float(load0), "load_after": float(load1)}))
PY
}
case "$WHAT" in
  sft) run_one sft tokens_per_s ;;
  reward) run_one reward pairs_per_s ;;
  both) run_one sft tokens_per_s; run_one reward pairs_per_s ;;
  *) echo "usage: $0 [sft|reward|both]" >&2; exit 2 ;;
esac
