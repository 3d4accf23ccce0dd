#!/usr/bin/env python3
"""Peer benchmark: SFT training throughput, mirroring `rlhf bench sft`.

    python tools/peer/sft_bench.py --model DIR --mode plain|trl [--batch 8] [--seq-len 256]
                                   [--prompt-len 192] [--steps 10] [--warmup 2] [--seed 0]
                                   [--threads 2] [--adamw default|foreach|fused] [--trl-checkpointing]

Synthetic prompt-masked data, seeded: (warmup + steps) * batch examples, each exactly seq_len tokens =
BOS(1) + (prompt_len - 1) prompt ids + (seq_len - prompt_len - 1) completion ids + EOS(2), ids uniform in
[3, vocab) from torch.Generator().manual_seed(seed) (one (N, seq_len - 2) draw). The loss is on the
seq_len - prompt_len completion tokens (completion ids + EOS) only; prompt positions are labelled -100.
Batches are taken in dataset order (no shuffling) so both modes see the same batches in the same order.
fp32 on CPU, sdpa attention, AdamW lr 1e-5, betas (0.9, 0.95), eps 1e-5, weight decay 0.1, grad-norm clip
1.0, constant LR. `--warmup` untimed optimizer steps, then `--steps` timed ones; step_s is the median.

  plain: LlamaForCausalLM.from_pretrained(dtype=float32, attn_implementation="sdpa");
         model(input_ids, labels=labels).loss.backward(); clip_grad_norm_; opt.step(); opt.zero_grad().
         Timed from just before the forward to just after zero_grad.
  trl:   trl.SFTTrainer + SFTConfig(completion_only_loss=True, ...) on a pre-tokenized dataset
         (`input_ids` + `completion_mask` columns; TRL turns the mask into -100 labels without
         re-tokenizing). Timed with a TrainerCallback from on_step_begin to on_step_end, which covers
         forward, backward, clip, optimizer and scheduler step and zero_grad; the dataloader fetch and
         collation (done before on_step_begin) and the per-step logging (after on_step_end) are outside;
         step_interval_s (on_step_end to on_step_end) includes them. SFTConfig turns activation
         checkpointing on by default; it is turned off here (like the plain loop) unless --trl-checkpointing.
         The Trainer's optimizer is its default optim="adamw_torch_fused" (fused torch AdamW).

tokens_per_s = batch * seq_len / step_s (input tokens); completion_tokens_per_s = batch *
completion_tokens / step_s. Prints one JSON line on stdout; everything else goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import torch

import transformers
from transformers import LlamaForCausalLM

BOS, EOS = 1, 2
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_TOKENIZER = os.path.join(REPO, "assets", "tokenizer", "tokenizer.json")


def make_data(n: int, seq_len: int, prompt_len: int, vocab: int, seed: int):
    """(input_ids, labels, completion_mask), each (n, seq_len) int64; labels -100 on the prompt."""
    assert 2 <= prompt_len < seq_len, "need BOS + prompt and at least the EOS in the completion"
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(3, vocab, (n, seq_len - 2), generator=g)
    ids = torch.cat(
        [torch.full((n, 1), BOS, dtype=torch.long), body, torch.full((n, 1), EOS, dtype=torch.long)], dim=1
    )
    completion_mask = torch.zeros(n, seq_len, dtype=torch.long)
    completion_mask[:, prompt_len:] = 1
    labels = ids.masked_fill(completion_mask == 0, -100)
    return ids, labels, completion_mask


def load_model(path: str):
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    return model


def make_optimizer(params, args):
    kw = dict(lr=1e-5, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    if args.adamw == "fused":
        kw["fused"] = True
    elif args.adamw == "foreach":
        kw["foreach"] = True
    return torch.optim.AdamW(params, **kw)


def run_plain(args, ids, labels):
    model = load_model(args.model)
    model.train()
    opt = make_optimizer(model.parameters(), args)
    b = args.batch
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        x = ids[step * b : (step + 1) * b]
        y = labels[step * b : (step + 1) * b]
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        losses.append(loss.item())
        if step >= args.warmup:
            times.append(t1 - t0)
    return {
        "peer": "plain-pytorch",
        "step_times_s": times,
        "losses": losses,
        "masked_prompt": True,  # labels built above: -100 on every prompt position
        "optimizer": f"torch.optim.AdamW({args.adamw})",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(model_dir)
    else:
        tok = PreTrainedTokenizerFast(
            tokenizer_file=DEFAULT_TOKENIZER, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # what TRL would do; no padding happens (all rows are seq_len)
    return tok


def run_trl(args, ids, labels, completion_mask):
    import datasets
    import trl
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    n_total = args.warmup + args.steps

    class StepClock(TrainerCallback):
        def __init__(self):
            self.begin: list[float] = []
            self.end: list[float] = []
            self.threads: list[int] = []
            self.losses: list[float] = []

        def on_step_begin(self, a, state, control, **kw):
            self.begin.append(time.perf_counter())
            self.threads.append(torch.get_num_threads())

        def on_step_end(self, a, state, control, **kw):
            self.end.append(time.perf_counter())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    # Pre-tokenized prompt/completion data: TRL recognises the `input_ids` column, skips tokenization and
    # folds `completion_mask` into -100 labels (completion_only_loss=True).
    ds = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "completion_mask": completion_mask.tolist()})
    config = SFTConfig(
        output_dir=os.path.join(args.workdir, "trl-sft-bench"),
        completion_only_loss=True,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        learning_rate=1e-5,
        adam_beta2=0.95,
        adam_epsilon=1e-5,
        weight_decay=0.1,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        max_steps=n_total,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        packing=False,
        max_length=args.seq_len,
        dataloader_num_workers=0,
        bf16=False,
        fp16=False,
        # TRL's configs default to gradient (activation) checkpointing ON, unlike transformers' Trainer; the
        # plain loop does not recompute activations, so it is off unless --trl-checkpointing.
        activation_checkpointing=args.trl_checkpointing,
        # Not in the benchmark definition; they do not change the step itself: same batch order as `plain`,
        # no progress bar on the terminal, a fixed seed.
        train_sampling_strategy="sequential",
        disable_tqdm=True,
        seed=args.seed,
    )
    clock = StepClock()
    model = load_model(args.model)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=ds,
        processing_class=load_tokenizer(args.model),
        callbacks=[clock],
    )

    # Check what the trainer will actually train on: the first collated batch must be our ids, with -100
    # on every prompt position and the completion ids (incl. EOS) as labels.
    batch = next(iter(trainer.get_train_dataloader()))
    bi, bl = batch["input_ids"].cpu(), batch["labels"].cpu()
    exp_ids, exp_labels = ids[: args.batch], labels[: args.batch]
    same_ids = bi.shape == exp_ids.shape and torch.equal(bi, exp_ids)
    masked_prompt = (
        same_ids
        and bool((bl[:, : args.prompt_len] == -100).all())
        and torch.equal(bl[:, args.prompt_len :], exp_ids[:, args.prompt_len :])
        and torch.equal(bl, exp_labels)
    )
    if not masked_prompt:
        print(f"first batch check FAILED: ids equal={same_ids}, labels={bl[0].tolist()}", file=sys.stderr)

    torch.set_num_threads(args.threads)  # in case anything above changed it
    trainer.train()

    steps = min(len(clock.begin), len(clock.end))
    assert steps == n_total, (steps, n_total)
    dur = [clock.end[i] - clock.begin[i] for i in range(steps)]
    intervals = [clock.end[i] - clock.end[i - 1] for i in range(max(1, args.warmup), steps)]
    opt = trainer.optimizer
    opt = getattr(opt, "optimizer", opt)  # accelerate wraps it
    group0 = opt.param_groups[0]
    return {
        "peer": "trl-sfttrainer",
        "step_times_s": dur[args.warmup :],
        "step_interval_s": statistics.median(intervals) if intervals else None,
        "losses": clock.losses,
        "masked_prompt": masked_prompt,
        "same_token_ids_as_plain": same_ids,
        "dataset_format": "pre-tokenized: input_ids + completion_mask",
        "optimizer": f"{type(opt).__module__}.{type(opt).__name__} (optim={config.optim}, "
        f"fused={group0.get('fused')}, foreach={group0.get('foreach')})",
        "loss_path": "TRL fused LM head (chunked log-probs + entropy + top-1 metrics)",
        "activation_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "threads_during_steps": sorted(set(clock.threads)),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trl": trl.__version__,
        "accelerate": __import__("accelerate").__version__,
        "datasets": datasets.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description="SFT training throughput peer of `rlhf bench sft`")
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["plain", "trl"], required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=192, help="prompt tokens incl. BOS")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--adamw",
        choices=["default", "foreach", "fused"],
        default="default",
        help="plain mode: torch.optim.AdamW implementation (default: torch's own choice; "
        "the Trainer in trl mode uses optim='adamw_torch_fused')",
    )
    ap.add_argument(
        "--trl-checkpointing",
        action="store_true",
        help="trl mode: keep TRL's default activation checkpointing (SFTConfig defaults it on); off otherwise",
    )
    ap.add_argument("--workdir", default=os.path.join(REPO, "runs", "peer-tmp"), help="trl output_dir parent")
    args = ap.parse_args()
    assert args.steps >= 1 and args.warmup >= 0

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()

    vocab = transformers.AutoConfig.from_pretrained(args.model).vocab_size
    n = args.batch * (args.warmup + args.steps)
    ids, labels, completion_mask = make_data(n, args.seq_len, args.prompt_len, vocab, args.seed)
    completion_tokens = args.seq_len - args.prompt_len

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout to the one JSON line
        if args.mode == "plain":
            res = run_plain(args, ids, labels)
        else:
            res = run_trl(args, ids, labels, completion_mask)

    step_s = statistics.median(res["step_times_s"])
    out = {
        "peer": res.pop("peer"),
        "tokens_per_s": args.batch * args.seq_len / step_s,
        "completion_tokens_per_s": args.batch * completion_tokens / step_s,
        "step_s": step_s,
        "step_min_s": min(res["step_times_s"]),
        "batch": args.batch,
        "seq_len": args.seq_len,
        "prompt_len": args.prompt_len,
        "completion_tokens": completion_tokens,
        "steps": len(res["step_times_s"]),
        "warmup": args.warmup,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "dtype": "float32",
        "attn_implementation": "sdpa",
        "model": args.model,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": None,
        "python": platform.python_version(),
    }
    out.update(res)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
