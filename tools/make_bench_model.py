#!/usr/bin/env python3
"""Write the random ~20M-parameter benchmark Llama in HF layout (fp32 safetensors).

    python tools/make_bench_model.py --out DIR [--seed 0]

Shape (== llama::Config::bench_20m): hidden 256, intermediate 688, 4 layers, 8 heads, 4 KV heads,
vocab 32000, untied lm_head, rms_norm_eps 1e-5, max_position_embeddings 4096, rope_theta 10000.
Weights use transformers' default init (normal, std 0.02), seeded. assets/tokenizer/tokenizer.json*
is copied in when present, so the folder is a complete model directory for `rlhf` and for HF.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

import transformers
from transformers import LlamaConfig, LlamaForCausalLM

transformers.logging.set_verbosity_error()
ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description="write the random 20M-parameter benchmark Llama")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-dir", type=Path, default=ROOT / "assets" / "tokenizer")
    args = ap.parse_args()

    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, max_shard_size="10GB")

    # transformers >= 5 writes `rope_parameters`/`dtype`; add the classic top-level spellings
    # that Llama-2 exports (and our Rust loader) use.
    cpath = args.out / "config.json"
    c = json.loads(cpath.read_text())
    c["rope_theta"] = 10000.0
    c["torch_dtype"] = "float32"
    cpath.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")

    copied = []
    if args.tokenizer_dir.is_dir():
        for f in sorted(args.tokenizer_dir.glob("tokenizer.json*")):
            shutil.copy(f, args.out / f.name)
            copied.append(f.name)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": str(args.out), "parameters": n, "tokenizer_files": copied}))


if __name__ == "__main__":
    main()
