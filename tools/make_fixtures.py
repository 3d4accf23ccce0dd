#!/usr/bin/env python3
"""Build the tiny Llama parity fixtures under tests/fixtures/ (reference outputs from HF transformers).

Writes, for each of two tiny random LlamaForCausalLM checkpoints:

  tests/fixtures/tiny-gqa/   fp16, sharded (model.safetensors.index.json + shards), GQA 4q/2kv,
                             untied lm_head, rope_theta 10000
  tests/fixtures/tiny-mha/   fp16, single model.safetensors, MHA 4q/4kv, tied embeddings,
                             rope_theta 500000, plus stale `rotary_emb.inv_freq` buffers that a
                             loader must ignore

and in each folder `expected.safetensors` + `expected.json` holding what transformers computes on
the checkpoint *as reloaded from the fp16 files* in float32 with eager attention. Also writes
tests/fixtures/lm_eval.jsonl (the NLL data set, shared by both models).

Everything is seeded: rerunning with the same torch/transformers versions reproduces the files.
Usage:  . .venv/bin/activate && python tools/make_fixtures.py [--out tests/fixtures]
                                  [--tokenizer assets/tokenizer/tokenizer.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(1)  # deterministic, and polite on a shared 2-core box

import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 32000
BOS, EOS, PAD = 1, 2, 0
NEW_TOKENS = 16
# embeddings / lm_head std: logits ~ N(0, 2.8^2), |logit| <= ~16 -- peaked softmax, yet small
# enough that fp32 rounding differences between implementations stay ~1e-5 (tolerance 1e-4)
EMBED_STD = 0.5
MIN_GAP = 2e-2  # required top1 - top2 logit gap along every greedy step

MODELS = {
    "tiny-gqa": dict(
        num_key_value_heads=2,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        sharded=True,
        seed=1234,
    ),
    "tiny-mha": dict(
        num_key_value_heads=4,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        sharded=False,
        seed=5678,
    ),
}

LM_EVAL_ROWS = [
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were striking thirteen.",
    "def fib(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Unicode: naïve café, Straße, Ελληνικά, русский текст, 日本語のテキスト, 한국어, emoji 🦙🚀 and math ∑ x² ≤ ∞.",
    "fn main() {\n\tlet v: Vec<u32> = (1..=10).map(|x| x * x).collect();\n\tprintln!(\"{:?}\", v);\n}",
    "Reinforcement learning from human feedback (RLHF) fine-tunes a language model against a learned reward model, with a KL penalty to the SFT policy.",
]


# --------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------
def make_config(spec: dict) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=88,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=spec["rope_theta"],
        tie_word_embeddings=spec["tie_word_embeddings"],
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=None,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )


@torch.no_grad()
def init_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Non-trivial random weights: O(1) residual updates from every block, random RMSNorm gains
    (final norm included), embeddings / lm_head of std EMBED_STD so the softmax is peaked."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    m = model.model
    m.embed_tokens.weight.copy_(randn(*m.embed_tokens.weight.shape) * EMBED_STD)
    for layer in m.layers:
        a = layer.self_attn
        # q/k a bit hotter than 1/sqrt(fan_in): sharper attention, so RoPE and masking matter
        for lin, scale in ((a.q_proj, 2.0), (a.k_proj, 2.0), (a.v_proj, 1.0), (a.o_proj, 1.0)):
            lin.weight.copy_(randn(*lin.weight.shape) * scale / math.sqrt(lin.weight.shape[1]))
        for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            lin.weight.copy_(randn(*lin.weight.shape) * 1.5 / math.sqrt(lin.weight.shape[1]))
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.copy_(1.0 + 0.3 * randn(*norm.weight.shape))
    m.norm.weight.copy_(1.0 + 0.3 * randn(*m.norm.weight.shape))
    if not model.config.tie_word_embeddings:
        model.lm_head.weight.copy_(randn(*model.lm_head.weight.shape) * EMBED_STD)


def write_checkpoint(spec: dict, seed: int, out: Path) -> None:
    cfg = make_config(spec)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    init_weights(model, seed)
    model = model.to(torch.float16)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if spec["sharded"]:
        model.save_pretrained(out, max_shard_size="1MB")
    else:
        model.save_pretrained(out, max_shard_size="1GB")

    # config.json: transformers 5 writes `rope_parameters` and `dtype`; real Llama-2 exports (and
    # our Rust loader) use the top-level `rope_theta` / `torch_dtype`. Write both spellings.
    cpath = out / "config.json"
    c = json.loads(cpath.read_text())
    c["rope_theta"] = spec["rope_theta"]
    c["torch_dtype"] = "float16"
    c["dtype"] = "float16"
    cpath.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")

    if not spec["sharded"]:
        # Older exports carry the RoPE buffer in the checkpoint. Store a *stale* one (theta 10000,
        # while config says 500000): a loader that uses it instead of config.json fails parity.
        f = out / "model.safetensors"
        tensors = load_file(f)
        hd = cfg.hidden_size // cfg.num_attention_heads
        stale = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        for i in range(cfg.num_hidden_layers):
            tensors[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = stale.clone()
        save_file(tensors, f, metadata={"format": "pt"})


def load_fp32(path: Path, **overrides) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", **overrides
    )
    model.eval()
    return model


def check_loaded_matches_disk(model: LlamaForCausalLM, path: Path) -> list[str]:
    """The fp32 model must hold exactly the fp16 values on disk; returns the ignored keys."""
    disk = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            for k in h.keys():
                disk[k] = h.get_tensor(k)
    sd = model.state_dict()
    ignored = sorted(k for k in disk if k not in sd)
    for k, v in sd.items():
        src = disk.get(k)
        if src is None and k == "lm_head.weight" and model.config.tie_word_embeddings:
            src = disk["model.embed_tokens.weight"]
        assert src is not None, f"{k} not on disk"
        assert src.dtype == torch.float16 or k in ignored, f"{k} stored as {src.dtype}"
        assert torch.equal(v, src.to(torch.float32)), f"{k} differs from disk"
    return ignored


# --------------------------------------------------------------------------------------------
# reference computations
# --------------------------------------------------------------------------------------------
def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def forward(model, ids, mask, pos):
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits


@torch.no_grad()
def manual_greedy(model, ids, mask, n):
    """Cache-free greedy loop with explicit position ids; returns new tokens and min top-2 gap."""
    ids, mask = ids.clone(), mask.clone()
    new, gaps = [], []
    for _ in range(n):
        logits = forward(model, ids, mask, positions_from_mask(mask))[:, -1, :]
        top2 = logits.topk(2, dim=-1).values
        gaps.append((top2[:, 0] - top2[:, 1]).min().item())
        nxt = logits.argmax(-1, keepdim=True)
        new.append(nxt)
        ids = torch.cat([ids, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return torch.cat(new, dim=1), min(gaps)


@torch.no_grad()
def hf_greedy(model, ids, mask, n):
    gc = GenerationConfig(
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        eos_token_id=None,
        pad_token_id=PAD,
        bos_token_id=BOS,
    )
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc, use_cache=True)
    return out[:, ids.shape[1]:]


def make_inputs(seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    r = lambda k: torch.randint(3, VOCAB, (k,), generator=g)  # noqa: E731
    row0 = torch.cat([torch.tensor([BOS]), r(7)])
    row1 = torch.cat([torch.full((3,), PAD), torch.tensor([BOS]), r(4)])
    input_ids = torch.stack([row0, row1]).long()
    attention_mask = torch.tensor([[1] * 8, [0, 0, 0] + [1] * 5], dtype=torch.long)
    single_ids = torch.cat([torch.tensor([BOS]), r(11)]).long().unsqueeze(0)
    return input_ids, attention_mask, single_ids


@torch.no_grad()
def lm_nll(model, rows_ids):
    per_row, tot_nll, tot_n = [], 0.0, 0
    for ids in rows_ids:
        t = torch.tensor([ids], dtype=torch.long)
        logits = forward(model, t, torch.ones_like(t), torch.arange(t.shape[1]).unsqueeze(0))
        lp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
        nll = -lp.gather(-1, t[0, 1:].unsqueeze(-1)).squeeze(-1)
        s = nll.sum().item()
        per_row.append({"ids": ids, "n_tokens": len(ids) - 1, "sum_nll": s, "mean_nll": s / (len(ids) - 1)})
        tot_nll += s
        tot_n += len(ids) - 1
    return tot_nll / tot_n, tot_n, per_row


@torch.no_grad()
def permuted_head_logits(model, ids, mask, pos):
    """Logits a kernel would produce if it mapped query heads to KV heads by tiling
    (head h -> kv h % n_kv) instead of HF's grouping (head h -> kv h // n_rep)."""
    cfg = model.config
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // nh
    n_rep = nh // nkv
    # tiled mapping of head h == grouped mapping of head perm[h]
    perm = [(h % nkv) * n_rep + h // nkv for h in range(nh)]
    idx = torch.cat([torch.arange(p * hd, (p + 1) * hd) for p in perm])
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(cfg.num_hidden_layers):
        q = f"model.layers.{i}.self_attn.q_proj.weight"
        o = f"model.layers.{i}.self_attn.o_proj.weight"
        sd[q] = sd[q][idx]
        sd[o] = sd[o][:, idx]
    m2 = LlamaForCausalLM(cfg).to(torch.float32).eval()
    m2.config._attn_implementation = "eager"
    m2.load_state_dict(sd, strict=False)
    if cfg.tie_word_embeddings:
        m2.tie_weights()
    return forward(m2, ids, mask, pos)


def dumps_compact(obj) -> str:
    """Indented JSON with innermost lists of scalars kept on one line."""
    import re

    text = json.dumps(obj, indent=1, ensure_ascii=False)
    scalar_list = re.compile(r"\[\s*([^\[\]{}]*?)\s*\]", re.S)
    return scalar_list.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def tok_encode(tokenizer_path: Path, texts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    return [[BOS] + tok.encode(t, add_special_tokens=False).ids for t in texts]


JS_TOKENIZER = ROOT / ".cache" / "llama-tokenizer-js" / "llama-tokenizer.js"


def js_encode(texts):
    """Same ids from llama-tokenizer-js@1.2.2 (independent port; scripts/fetch_tokenizer.sh), or
    None when node or the package is not available."""
    import subprocess

    if not JS_TOKENIZER.exists() or shutil.which("node") is None:
        return None
    script = (
        "const { default: tok } = await import(process.argv[1]);"
        "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(texts.map((t) => [1, ...tok.encode(t, false, true)])));"
    )
    script = script.replace("require('fs')", "(await import('node:fs')).default")
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script, JS_TOKENIZER.as_uri()],
        input=json.dumps(texts), capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


# --------------------------------------------------------------------------------------------
def build(name: str, spec: dict, out_root: Path, nll_rows, nll_texts_path: str, crosscheck=None):
    out = out_root / name
    seed = spec["seed"]
    for attempt in range(200):
        write_checkpoint(spec, seed, out)
        model = load_fp32(out)
        input_ids, attention_mask, single_ids = make_inputs(seed)
        g_batch, gap_b = manual_greedy(model, input_ids, attention_mask, NEW_TOKENS)
        g_single, gap_s = manual_greedy(model, single_ids, torch.ones_like(single_ids), NEW_TOKENS)
        eos_hit = bool((g_batch == EOS).any() or (g_single == EOS).any())
        if min(gap_b, gap_s) > MIN_GAP and not eos_hit:
            break
        print(f"[{name}] seed {seed}: min gap {min(gap_b, gap_s):.4g}, eos {eos_hit}; reseeding")
        seed += 1
    else:
        raise SystemExit(f"{name}: no seed with clear greedy winners")

    ignored = check_loaded_matches_disk(model, out)
    pos = positions_from_mask(attention_mask)
    logits = forward(model, input_ids, attention_mask, pos)
    single_pos = torch.arange(single_ids.shape[1]).unsqueeze(0)
    single_logits = forward(model, single_ids, torch.ones_like(single_ids), single_pos)

    # HF generate (KV cache, its own left-padding position handling) must agree with the
    # cache-free explicit-position loop.
    hf_b = hf_greedy(model, input_ids, attention_mask, NEW_TOKENS)
    hf_s = hf_greedy(model, single_ids, torch.ones_like(single_ids), NEW_TOKENS)
    assert torch.equal(hf_b, g_batch), (hf_b, g_batch)
    assert torch.equal(hf_s, g_single), (hf_s, g_single)

    # Padding invariance: row 1 of the padded batch == that row alone, unpadded.
    r1 = input_ids[1:, 3:]
    alone = forward(model, r1, torch.ones_like(r1), torch.arange(5).unsqueeze(0))
    pad_invariance = (alone[0] - logits[1, 3:]).abs().max().item()
    assert pad_invariance < 1e-4, pad_invariance

    valid = attention_mask.bool()
    # How discriminative is the fixture? (max |Δlogit| at valid positions under typical bugs)
    sens = {}
    sens["pads_not_masked"] = (
        (forward(model, input_ids, torch.ones_like(attention_mask), pos) - logits)[valid].abs().max().item()
    )
    # RoPE only sees relative offsets, so a uniform shift of a row's positions (arange instead of
    # mask.cumsum-1) changes valid logits only at rounding level; recorded, not required.
    naive_pos = torch.arange(8).unsqueeze(0).expand(2, 8)
    arange_diff = (forward(model, input_ids, attention_mask, naive_pos) - logits)[valid].abs().max().item()
    wrong_theta = 10000.0 if spec["rope_theta"] != 10000.0 else 500000.0
    cfg_wt = json.loads((out / "config.json").read_text())
    with tempfile.TemporaryDirectory() as td:
        for f in out.iterdir():
            shutil.copy(f, td)
        cfg_wt["rope_theta"] = wrong_theta
        cfg_wt["rope_parameters"] = {"rope_theta": wrong_theta, "rope_type": "default"}
        (Path(td) / "config.json").write_text(json.dumps(cfg_wt))
        m_wt = load_fp32(Path(td))
        sens[f"rope_theta_{wrong_theta:g}"] = (
            (forward(m_wt, input_ids, attention_mask, pos) - logits)[valid].abs().max().item()
        )
    if spec["num_key_value_heads"] != 4:
        sens["kv_heads_tiled_instead_of_grouped"] = (
            (permuted_head_logits(model, input_ids, attention_mask, pos) - logits)[valid].abs().max().item()
        )
    for k, v in sens.items():
        assert v > 1e-2, f"{name}: fixture not sensitive to {k} ({v})"

    nll = None
    if nll_rows is not None:
        mean_nll, n_tok, per_row = lm_nll(model, nll_rows)
        nll = {
            "data": nll_texts_path,
            "encoding": "tokenizer.json encode(text, add_special_tokens=False), BOS=1 prepended, no EOS",
            "ids_crosschecked_with": crosscheck,
            "loss": "token-weighted mean over all rows of -log p(ids[t] | ids[:t]) for t >= 1",
            "mean_nll": mean_nll,
            "n_tokens": n_tok,
            "n_tokens_note": "number of scored tokens = sum over rows of (len(ids) - 1)",
            "rows": per_row,
        }

    tensors = {
        "input_ids": input_ids.contiguous(),
        "attention_mask": attention_mask.contiguous(),
        "position_ids": pos.contiguous(),
        "logits": logits.float().contiguous(),
        "single_ids": single_ids.contiguous(),
        "single_logits": single_logits.float().contiguous(),
        "greedy_new_ids": g_batch.contiguous(),
        "single_greedy_new_ids": g_single.contiguous(),
    }
    save_file(tensors, out / "expected.safetensors", metadata={"format": "pt"})

    cfg = model.config
    expected = {
        "generator": "tools/make_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "seed": seed,
        "weights_dtype": "float16",
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "reference_load": "LlamaForCausalLM.from_pretrained(dir, dtype=torch.float32, attn_implementation='eager')",
        "tolerance": 1e-4,
        "model": {
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "rope_theta": spec["rope_theta"],
            "rms_norm_eps": cfg.rms_norm_eps,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "sharded": spec["sharded"],
            "ignored_checkpoint_tensors": ignored,
        },
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()},
        "batch": {
            "input_ids": input_ids.tolist(),
            "attention_mask": attention_mask.tolist(),
            "pad_id": PAD,
            "left_padding": [0, 3],
            "position_ids": pos.tolist(),
            "position_ids_passed_explicitly": True,
            "position_ids_rule": "clamp(attention_mask.cumsum(-1) - 1, min=0) (== HF generate's rule)",
            "logits_valid_where": "attention_mask == 1; logits at padded query positions are implementation-defined (fully masked rows), do not compare them",
            "pad_invariance_max_abs_diff": pad_invariance,
            "arange_positions_max_abs_diff": arange_diff,
            "arange_positions_note": "RoPE is relative: using arange(8) instead of the rule shifts row 1 uniformly and changes valid logits only at rounding level",
        },
        "single": {
            "input_ids": single_ids.tolist(),
            "position_ids": "arange(12)",
            "attention_mask": "all ones",
        },
        "greedy": {
            "new_tokens": NEW_TOKENS,
            "hf_call": "model.generate(input_ids, attention_mask, do_sample=False, max_new_tokens=16, min_new_tokens=16, eos_token_id=None, pad_token_id=0, use_cache=True)",
            "batch_new_ids": g_batch.tolist(),
            "single_new_ids": g_single.tolist(),
            "eos_never_generated": True,
            "min_top2_logit_gap": min(gap_b, gap_s),
            "note": "pure argmax; identical to a cache-free loop with position_ids = clamp(mask.cumsum-1, 0) and mask extended by 1 per new token",
        },
        "sensitivity_max_abs_logit_diff": sens,
    }
    if nll is not None:
        expected["nll"] = nll
    (out / "expected.json").write_text(dumps_compact(expected) + "\n")
    print(
        f"[{name}] seed {seed}  min_gap {min(gap_b, gap_s):.3f}  sens {json.dumps({k: round(v, 3) for k, v in sens.items()})}"
        + (f"  nll {nll['mean_nll']:.4f} over {nll['n_tokens']}" if nll else "")
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures"))
    ap.add_argument("--tokenizer", default=str(ROOT / "assets" / "tokenizer" / "tokenizer.json"))
    ap.add_argument("--skip-nll", action="store_true", help="development only: no tokenizer needed")
    ap.add_argument("--no-js-crosscheck", action="store_true",
                    help="do not compare the NLL token ids with llama-tokenizer-js (node)")
    ap.add_argument("--only", choices=sorted(MODELS), help="build one model")
    args = ap.parse_args()
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)

    jsonl = out_root / "lm_eval.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for t in LM_EVAL_ROWS:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    try:
        rel = str(jsonl.resolve().relative_to(ROOT))
    except ValueError:
        rel = str(jsonl)

    rows, crosscheck = None, None
    if not args.skip_nll:
        tp = Path(args.tokenizer)
        if not tp.exists():
            sys.exit(f"tokenizer not found at {tp} (pass --tokenizer or --skip-nll)")
        rows = tok_encode(tp, LM_EVAL_ROWS)
        js = None if args.no_js_crosscheck else js_encode(LM_EVAL_ROWS)
        if js is not None:
            for i, (a, b) in enumerate(zip(rows, js)):
                if a != b:
                    sys.exit(f"lm_eval row {i}: tokenizer.json ids differ from llama-tokenizer-js\n {a}\n {b}")
            print("NLL token ids: tokenizer.json == llama-tokenizer-js@1.2.2 on every row")
        crosscheck = "llama-tokenizer-js@1.2.2" if js is not None else None

    for name, spec in MODELS.items():
        if args.only and name != args.only:
            continue
        build(name, spec, out_root, rows, rel, crosscheck)


if __name__ == "__main__":
    main()
