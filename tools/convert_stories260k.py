#!/usr/bin/env python3
"""Converts karpathy's llama2.c `stories260K.bin` (a 260K-parameter Llama pretrained on
TinyStories) to the HF layout `rlhf` and transformers load: config.json + model.safetensors.

    python tools/convert_stories260k.py --bin stories260K.bin --out assets/stories260K

Where the weights come from: karpathy/tinyllamas on the Hugging Face Hub
(`stories260K/stories260K.bin`, 1,056,540 bytes). A copy committed to a public GitHub repository
that reproduces karpathy's published greedy sample (doc/stories260K.md in karpathy/llama2.c: "Once
upon a time, there was a little girl named Lily. ...") token for token under llama2.c's `run.c`:
ytmytm/llama2.c64, `stories260K.bin` (sha256
b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696), with its tokenizer `tok512.bin`.
The copy in plctlab/rvspoc-s2311-llama2 (commit 2fa3f65, sha256 9414d5a2...) is NOT the trained
model: its embeddings, norms and header are the same, but its wq, wk, wv, wo, w1, w2 and w3 hold the
same values in another order (wq and wo exactly transposed, as that repository's updateWeight.c
does in place through a shared mmap), so `run.c` itself writes gibberish with it ("RR lo lo loR
time..."). This script refuses that file by its hash.

Checked (2026-12-02): with the ytmytm copy, transformers' greedy `generate` from BOS on the
converted model gives the same 255 token ids as `run.c -t 0.0 -n 256` (compiled from
karpathy/llama2.c; token ids read through a fake 512-piece tokenizer.bin whose piece i is "[i]").

The file is llama2.c's legacy (version 0) export: a header of 7 int32 (dim, hidden_dim, n_layers,
n_heads, n_kv_heads, vocab_size — negative when the classifier is not shared — and seq_len), then
float32 tensors in PyTorch `nn.Linear` layout ([out, in]): token embedding, attention RMSNorm
weights, wq, wk, wv, wo, FFN RMSNorm weights, w1, w2, w3, final RMSNorm weight, the RoPE tables
(skipped), and the classifier when not shared.

llama2.c rotates interleaved pairs (x0, x1), (x2, x3) ... as complex numbers; HF Llama rotates the
two halves of each head. Permuting the rows of wq and wk per head (HF's
`convert_llama_weights_to_hf.permute`) makes the half-split rotation compute the same attention.
The model was trained with BOS = 1 opening every story and no EOS token: a story ends when the
model starts the next one, so replies end at their own length with eos_token_id = 1 (run.c stops
on BOS the same way). The tokenizer (`tok512`, a 512-piece sentencepiece model) is not written:
`rlhf bench rollout` works on token ids.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


# Copies known not to be the trained checkpoint (see the module docstring).
CORRUPT = {
    "9414d5a285453a7eab631713d171753232c978f6f97654211469aff8be93c8d6": "plctlab/rvspoc-s2311-llama2's stories260K.bin, whose "
    "attention and FFN matrices were rewritten in place (transposed): llama2.c's run.c itself writes gibberish with it; "
    "use karpathy/tinyllamas' file (or ytmytm/llama2.c64's copy, sha256 b0a507e7...)",
}


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Interleaved-pair rows of each head -> half-split rows (HF's conversion)."""
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, type=Path, help="llama2.c checkpoint (stories260K.bin)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()

    raw = args.bin.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest in CORRUPT:
        raise SystemExit(f"{args.bin}: sha256 {digest} is {CORRUPT[digest]}")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    hd = dim // n_heads
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    off = 0

    def take(*shape: int) -> np.ndarray:
        nonlocal off
        n = int(np.prod(shape))
        if off + n > data.size:
            raise SystemExit(f"{args.bin}: truncated (needs more than {data.size} floats)")
        a = data[off : off + n].reshape(shape).copy()
        off += n
        return a

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, n_heads * hd, dim)
    wk = take(n_layers, n_kv * hd, dim)
    wv = take(n_layers, n_kv * hd, dim)
    wo = take(n_layers, dim, n_heads * hd)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, hd // 2)  # freq_cis_real
    take(seq_len, hd // 2)  # freq_cis_imag
    wcls = emb if shared else take(vocab, dim)
    if off != data.size:
        raise SystemExit(f"{args.bin}: {data.size - off} floats left over: not a legacy llama2.c export of this shape")

    t = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = rms_att[i]
        t[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        t[p + "self_attn.q_proj.weight"] = permute(wq[i], n_heads)
        t[p + "self_attn.k_proj.weight"] = permute(wk[i], n_kv)
        t[p + "self_attn.v_proj.weight"] = wv[i]
        t[p + "self_attn.o_proj.weight"] = wo[i]
        t[p + "mlp.gate_proj.weight"] = w1[i]
        t[p + "mlp.down_proj.weight"] = w2[i]
        t[p + "mlp.up_proj.weight"] = w3[i]
    if not shared:
        t["lm_head.weight"] = wcls
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": dim,
        "intermediate_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": hd,
        "max_position_embeddings": seq_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": shared,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        # No EOS in training: a story ends where the next one begins (BOS).
        "eos_token_id": 1,
        "torch_dtype": "float32",
        "source": "karpathy/tinyllamas stories260K (llama2.c), converted by tools/convert_stories260k.py",
        "source_sha256": digest,
    }
    (args.out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    n_params = sum(v.size for k, v in t.items())
    print(json.dumps({"out": str(args.out), "sha256": digest, "parameters": int(n_params), "shared_classifier": shared, "dim": dim, "layers": n_layers}))


if __name__ == "__main__":
    main()
