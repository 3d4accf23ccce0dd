#!/usr/bin/env python3
"""Peer benchmark: HF transformers `generate` on the prompts of `rlhf bench rollout`.

    python tools/peer/hf_rollout_bench.py --model DIR --prompts prompts.json [--threads N]

prompts.json is what `rlhf bench rollout --dump-prompts` writes: the prompts' token ids, K
samples each, max_new_tokens, the batch size (the engine's slots), temperature, eos_token_id.
`generate` runs static batches of `batch` rows (batch / K prompts, `num_return_sequences=K`),
left-padded, sampling at the temperature with no top-k / top-p, stopping each batch when every
row has produced EOS (rows that ended emit padding until then), fp32 on CPU, sdpa attention, KV
cache on, under torch.inference_mode(). One warm-up batch, then one timed pass over all prompts.
tokens_per_s counts useful tokens (each reply up to and including its EOS), as the Rust side
does; useful_fraction = useful tokens / (rows x steps of their batch). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

transformers.logging.set_verbosity_error()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.load(open(args.prompts))
    prompts, k, n = spec["prompts"], spec["samples"], spec["max_new_tokens"]
    eos, temp = spec["eos_token_id"], spec["temperature"]
    per_batch = max(1, spec["batch"] // k)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa").eval()
    pad = 0
    torch.manual_seed(spec.get("seed", 0))

    def run(batch):
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        kw = dict(do_sample=True, temperature=temp, top_k=0, top_p=1.0) if temp > 0 else dict(do_sample=False)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, num_return_sequences=k,
                             eos_token_id=eos, pad_token_id=pad, use_cache=True, **kw)
        new = out[:, width:]
        useful = 0
        for row in new.tolist():
            useful += row.index(eos) + 1 if eos in row else len(row)
        return useful, new.shape[0] * new.shape[1]

    with torch.inference_mode():
        run(prompts[:per_batch])  # warm-up
        t0 = time.perf_counter()
        useful = computed = 0
        for i in range(0, len(prompts), per_batch):
            u, c = run(prompts[i:i + per_batch])
            useful += u
            computed += c
        secs = time.perf_counter() - t0
    print(json.dumps({
        "peer": "hf-transformers generate (static batches)",
        "tokens_per_s": useful / secs, "useful_fraction": useful / max(computed, 1), "new_tokens": useful,
        "seconds": secs, "rows": len(prompts) * k, "batch_rows": per_batch * k, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
