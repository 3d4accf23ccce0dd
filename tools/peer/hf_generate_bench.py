#!/usr/bin/env python3
"""Peer benchmark: HF transformers generation throughput, mirroring `rlhf bench generate`.

    python tools/peer/hf_generate_bench.py --model DIR [--batch 16] [--prompt-len 32]
                                           [--new-tokens 64] [--repeats 3] [--seed 0] [--threads N]

Random prompts (ids uniform in [3, vocab), no padding), sampling at temperature 1 with no top-k /
top-p truncation, exactly N new tokens per row (EOS suppressed by min_new_tokens), fp32 on CPU,
KV cache on, eager attention, under torch.inference_mode(). One warm-up run, then the median of
--repeats timed runs. tokens_per_s = batch * new_tokens / seconds, where seconds is the whole
generate() call (prefill + decode). prefill_s is the time from the call to the first logits (the
prompt forward), measured inside the same runs with a pass-through logits processor.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import transformers
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

transformers.logging.set_verbosity_error()


class StepClock(LogitsProcessor):
    """Records when each step's logits reach the sampler; returns them untouched."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def main():
    ap = argparse.ArgumentParser(description="HF generate() throughput peer of `rlhf bench generate`")
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(3, vocab, (args.batch, args.prompt_len), generator=g)
    attention_mask = torch.ones_like(input_ids)
    n = args.new_tokens

    def run():
        clock = StepClock()
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=n,
            min_new_tokens=n,
            use_cache=True,
            logits_processor=LogitsProcessorList([clock]),
        )
        t1 = time.perf_counter()
        assert out.shape == (args.batch, args.prompt_len + n), out.shape
        return t1 - t0, clock.times[0] - t0

    with torch.inference_mode():
        run()  # warm-up
        runs = [run() for _ in range(max(1, args.repeats))]
    secs = [r[0] for r in runs]
    pre = [r[1] for r in runs]
    seconds = statistics.median(secs)
    prefill_s = statistics.median(pre)
    decode_s = max(seconds - prefill_s, 1e-12)
    print(
        json.dumps(
            {
                "peer": "hf-transformers",
                "tokens_per_s": args.batch * n / seconds,
                "batch": args.batch,
                "prompt_len": args.prompt_len,
                "new_tokens": n,
                "seconds": seconds,
                "prefill_s": prefill_s,
                "decode_s": decode_s,
                "decode_tokens_per_s": args.batch * n / decode_s,
                "repeats": len(runs),
                "run_seconds": secs,
                "run_prefill_s": pre,
                "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "device": "cpu",
                "dtype": "float32",
                "attn_implementation": "eager",
                "parameters": sum(p.numel() for p in model.parameters()),
                "model": args.model,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
