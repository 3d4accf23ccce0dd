#!/usr/bin/env python3
"""Peer benchmark: tokenize + cache preference comparisons, mirroring `rlhf data cache --kind preference`.

    python tools/peer/tokenize_bench.py --data FILE.jsonl|FILE.parquet --out DIR
                                        [--tokenizer assets/tokenizer/tokenizer.json]
                                        [--num-proc 1] [--batch-size 1000]
                                        [--check-ours CACHE_DIR] [--check N]

What a Python pipeline does today (HF `datasets` + the fast tokenizer, as TRL's RewardTrainer
preprocessing does):

  1. `load_dataset("json"|"parquet", data_files=FILE, split="train", cache_dir=OUT/hf)`: the file
     converted to an Arrow cache (pyarrow's reader).
  2. `.map(tokenize, batched=True, batch_size=B, num_proc=N)` with
     `PreTrainedTokenizerFast(tokenizer_file=...)` (HF `tokenizers`, Rust; a batched call encodes the
     batch's texts in parallel on every core when num_proc is 1), writing the Arrow cache
     `OUT/tokenized.arrow`: columns `input_ids_chosen`, `input_ids_rejected` (the full sequences
     prompt + reply) beside the metadata columns (rating, kind, source, safety flags); the text
     columns are removed.

The chat format is Meta's `chat_completion` (the same as `llama::chat::encode_dialog`): a system
message folded into the first user turn inside `<<SYS>>\\n...\\n<</SYS>>\\n\\n`, every completed
(user, assistant) pair encoded as `[BOS] + encode(f"[INST] {u.strip()} [/INST] {a.strip()} ") +
[EOS]`, for prompt + chosen and prompt + rejected. `split_special_tokens=True` so that `<s>` typed in a
text is text, as in SentencePiece. The whole pipeline (load + map) is timed; `--check-ours DIR` then
compares the first `--check` comparisons' ids with our cache folder (`tokens.u32` / `offsets.u64`,
prompt ++ chosen and prompt ++ rejected) and reports `same_ids_as_ours`.

Prints one JSON line on stdout: records, tokens (all ids of both full sequences), load_s, map_s,
seconds, records_per_s, tokens_per_s, memory (VmHWM = peak RSS so far, and RssAnon / RssFile, in KiB,
after the load and after the map: read before anything else touches the results), num_proc, versions.
Under `/usr/bin/time -v` the "Maximum resident set size" covers the whole script, the id check
included (with --num-proc > 1, GNU time reports the largest single process, not the sum).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def segments(messages, reply):
    """The texts Meta's chat_completion encodes (each with BOS and EOS) for `messages` + reply."""
    msgs = [dict(m) for m in messages] + [{"role": "assistant", "content": reply}]
    if msgs[0]["role"] == "system":
        msgs = [{"role": msgs[1]["role"], "content": B_SYS + msgs[0]["content"] + E_SYS + msgs[1]["content"]}] + msgs[2:]
    return [
        f"{B_INST} {u['content'].strip()} {E_INST} {a['content'].strip()} "
        for u, a in zip(msgs[::2], msgs[1::2])
    ]


def as_messages(prompt):
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def make_tokenize(tok):
    bos, eos = tok.convert_tokens_to_ids("<s>"), tok.convert_tokens_to_ids("</s>")

    def tokenize(batch):
        texts, owners = [], []  # owners[k] = (row, side)
        for i, (p, c, r) in enumerate(zip(batch["prompt"], batch["chosen"], batch["rejected"])):
            msgs = as_messages(p)
            for side, reply in ((0, c), (1, r)):
                for t in segments(msgs, reply):
                    texts.append(t)
                    owners.append((i, side))
        enc = tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        n = len(batch["chosen"])
        out = [[[], []] for _ in range(n)]
        for (i, side), ids in zip(owners, enc):
            out[i][side] += [bos] + ids + [eos]
        return {"input_ids_chosen": [o[0] for o in out], "input_ids_rejected": [o[1] for o in out]}

    return tokenize


def memory_kib():
    """Peak RSS so far (VmHWM) and the current split of RSS into anonymous and file-backed pages
    (HF datasets memory-maps its Arrow files: pages of them that were read count as resident)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def check_ours(ds, cache_dir, n):
    import numpy as np

    tokens = np.memmap(os.path.join(cache_dir, "tokens.u32"), dtype="<u4", mode="r")
    offsets = np.memmap(os.path.join(cache_dir, "offsets.u64"), dtype="<u8", mode="r")
    n = min(n, len(ds), (len(offsets) - 1) // 3)
    seq = lambda j: tokens[offsets[j]:offsets[j + 1]].tolist()  # noqa: E731
    for i, row in enumerate(ds.select(range(n))):
        p, c, r = seq(3 * i), seq(3 * i + 1), seq(3 * i + 2)
        if p + c != row["input_ids_chosen"] or p + r != row["input_ids_rejected"]:
            return {"same_ids_as_ours": False, "first_difference": i, "checked": i + 1}
    return {"same_ids_as_ours": True, "checked": n}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help="cache folder (emptied first)")
    ap.add_argument("--tokenizer", default="assets/tokenizer/tokenizer.json")
    ap.add_argument("--num-proc", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--check-ours", help="our cache folder to compare ids with")
    ap.add_argument("--check", type=int, default=10000)
    a = ap.parse_args()

    import datasets
    import tokenizers
    import transformers
    from datasets import load_dataset
    from transformers import PreTrainedTokenizerFast

    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    datasets.disable_progress_bars()
    kind = "parquet" if a.data.endswith((".parquet", ".pq")) else "json"

    t0 = time.perf_counter()
    tok = PreTrainedTokenizerFast(tokenizer_file=a.tokenizer)
    ds = load_dataset(kind, data_files=a.data, split="train", cache_dir=os.path.join(a.out, "hf"))
    t1 = time.perf_counter()
    mem_load = memory_kib()
    out = ds.map(
        make_tokenize(tok),
        batched=True,
        batch_size=a.batch_size,
        num_proc=a.num_proc if a.num_proc > 1 else None,
        remove_columns=["prompt", "chosen", "rejected"],
        cache_file_name=os.path.join(a.out, "tokenized.arrow"),
        desc=None,
    )
    t2 = time.perf_counter()
    mem_map = memory_kib()

    lengths = out.with_format("arrow")
    tokens = 0
    for col in ("input_ids_chosen", "input_ids_rejected"):
        for chunk in lengths.data.column(col).chunks:
            tokens += len(chunk.values)
    seconds = t2 - t0
    result = {
        "records": len(out),
        "tokens": tokens,
        "load_s": t1 - t0,
        "map_s": t2 - t1,
        "seconds": seconds,
        "records_per_s": len(out) / seconds,
        "tokens_per_s": tokens / seconds,
        "memory_kib_after_load": mem_load,
        "memory_kib_after_map": mem_map,
        "num_proc": a.num_proc,
        "batch_size": a.batch_size,
        "cache_files": [f["filename"] for f in out.cache_files],
        "versions": {
            "python": platform.python_version(),
            "datasets": datasets.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    if a.check_ours:
        result.update(check_ours(out, a.check_ours, a.check))
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
