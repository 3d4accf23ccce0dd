#!/usr/bin/env python3
"""Check that a checkpoint written by our Rust code loads in HF transformers and matches a reference.

    python tools/check_roundtrip.py --ours DIR --reference DIR [--atol 1e-5]

Both directories are HF layout (config.json + model.safetensors or sharded index). The model class
comes from config.json `architectures`: LlamaForSequenceClassification -> AutoModelForSequenceClassification,
anything else -> AutoModelForCausalLM. Both are loaded in float32 with eager attention; a fixed set of
seeded prompts is run through both (one row at a time, no padding, so sequence-classification
pooling needs no pad id). Exit status 0 only if

  * `ours` loads with no missing and no unexpected tensors (HF would silently random-init a missing one),
  * the architecture-defining config fields agree (after transformers' own normalisation,
    e.g. top-level `rope_theta` vs `rope_parameters`),
  * every logit agrees within --atol (default 1e-5).

Prints one JSON line: {"ok":..., "max_abs_diff":..., "config_mismatches":..., ...}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(max(1, min(4, torch.get_num_threads())))

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

transformers.logging.set_verbosity_error()

CONFIG_FIELDS = [
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
]


def raw_config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def arch_of(cfg: dict) -> str:
    archs = cfg.get("architectures") or ["LlamaForCausalLM"]
    return archs[0]


def rope_theta(config) -> float | None:
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    v = getattr(config, "rope_theta", None)
    return None if v is None else float(v)


def rope_type(config) -> str | None:
    rp = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if isinstance(rp, dict):
        return rp.get("rope_type") or rp.get("type")
    return None


def load(d: Path, arch: str):
    cls = AutoModelForSequenceClassification if arch == "LlamaForSequenceClassification" else AutoModelForCausalLM
    model, info = cls.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    model.eval()
    return model, info


def prompts(vocab: int, bos: int | None):
    g = torch.Generator().manual_seed(20240607)
    rows = []
    for n in (1, 7, 16, 33):
        ids = torch.randint(3, vocab, (n,), generator=g)
        if bos is not None:
            ids[0] = bos
        rows.append(ids.unsqueeze(0))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description="compare a Rust-written HF checkpoint with a reference")
    ap.add_argument("--ours", required=True, type=Path)
    ap.add_argument("--reference", required=True, type=Path)
    ap.add_argument("--atol", type=float, default=1e-5)
    args = ap.parse_args()

    result: dict = {"ours": str(args.ours), "reference": str(args.reference), "atol": args.atol}
    errors: list[str] = []

    raw_o, raw_r = raw_config(args.ours), raw_config(args.reference)
    arch_o, arch_r = arch_of(raw_o), arch_of(raw_r)
    result["architecture"] = arch_o
    if arch_o != arch_r:
        errors.append(f"architectures differ: ours {arch_o} vs reference {arch_r}")

    try:
        m_o, info_o = load(args.ours, arch_o)
    except Exception as e:  # noqa: BLE001
        result.update(ok=False, errors=[f"transformers cannot load ours: {type(e).__name__}: {e}"])
        print(json.dumps(result))
        return 1
    m_r, info_r = load(args.reference, arch_r)

    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        bad = sorted(str(k) for k in (info_o.get(kind) or []))
        if bad:
            errors.append(f"ours has {kind}: {bad[:10]}{' ...' if len(bad) > 10 else ''}")
    result["reference_ignored_keys"] = sorted(str(k) for k in (info_r.get("unexpected_keys") or []))

    # config agreement, on the normalised config objects
    mismatches = {}
    fields = CONFIG_FIELDS + (["num_labels"] if arch_o == "LlamaForSequenceClassification" else [])
    for f in fields:
        a, b = getattr(m_o.config, f, None), getattr(m_r.config, f, None)
        if a != b:
            mismatches[f] = {"ours": a, "reference": b}
    for f, fn in (("rope_theta", rope_theta), ("rope_type", rope_type)):
        a, b = fn(m_o.config), fn(m_r.config)
        if a != b:
            mismatches[f] = {"ours": a, "reference": b}
    result["config_mismatches"] = mismatches
    if mismatches:
        errors.append(f"config fields differ: {sorted(mismatches)}")
    result["stored_dtype"] = {
        "ours": raw_o.get("torch_dtype", raw_o.get("dtype")),
        "reference": raw_r.get("torch_dtype", raw_r.get("dtype")),
    }

    # parameters (localises a logit mismatch)
    sd_o, sd_r = m_o.state_dict(), m_r.state_dict()
    worst_p, worst_name = 0.0, None
    for k, v in sd_r.items():
        if k not in sd_o:
            errors.append(f"ours lacks parameter {k}")
            continue
        if sd_o[k].shape != v.shape:
            errors.append(f"{k}: shape {tuple(sd_o[k].shape)} vs reference {tuple(v.shape)}")
            continue
        d = (sd_o[k].float() - v.float()).abs().max().item() if v.numel() else 0.0
        if d > worst_p:
            worst_p, worst_name = d, k
    result["max_param_abs_diff"] = worst_p
    result["worst_param"] = worst_name

    # logits on fixed prompts
    max_diff = 0.0
    vocab = m_r.config.vocab_size
    bos = m_r.config.bos_token_id if isinstance(m_r.config.bos_token_id, int) else None
    with torch.inference_mode():
        for ids in prompts(vocab, bos):
            kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
            lo, lr = m_o(**kw).logits, m_r(**kw).logits
            if lo.shape != lr.shape:
                errors.append(f"logit shapes differ: {tuple(lo.shape)} vs {tuple(lr.shape)}")
                continue
            if not torch.isfinite(lo).all():
                errors.append("ours produced non-finite logits")
            max_diff = max(max_diff, (lo - lr).abs().max().item())
    result["max_abs_diff"] = max_diff
    if not max_diff <= args.atol:
        errors.append(f"max |logit diff| {max_diff:.3g} > atol {args.atol:g}")

    result["transformers_version"] = transformers.__version__
    result["torch_version"] = torch.__version__.split("+")[0]
    result["ok"] = not errors
    result["errors"] = errors
    print(json.dumps(result, default=str))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
