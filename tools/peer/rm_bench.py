#!/usr/bin/env python3
"""Peer benchmark: reward-model training throughput (pairs/s), mirroring `rlhf bench reward`.

    python tools/peer/rm_bench.py --model DIR --mode trl|plain [--batch 8] [--seq-len 256] [--prompt-len 192]
                                  [--steps 10] [--warmup 2] [--seed 0] [--threads 2] [--adamw default|foreach|fused]

The checkpoint (a causal LM such as the 20M bench Llama, or a reward model) is loaded as
`LlamaForSequenceClassification(num_labels=1)` in fp32 with sdpa attention; a missing `score` head is newly
initialised after `torch.manual_seed(seed)` (same head in both modes); `pad_token_id` is 0 (`<unk>`), so the
score is read at the real last token (the EOS) -- see the note on TRL's pad default below.

Synthetic pairs, seeded (`torch.Generator().manual_seed(seed)`, one (N, 2*seq_len - prompt_len - 3) draw of ids
uniform in [3, vocab)): a shared prompt of BOS(1) + (prompt_len - 1) ids, then chosen = (seq_len - prompt_len - 1)
ids + EOS(2) and rejected = as many other ids + EOS; each full sequence is exactly seq_len tokens (no padding).
`batch` pairs per optimizer step, in dataset order, no margin, no centering. AdamW lr 1e-5, betas (0.9, 0.95),
eps 1e-5, weight decay 0.1, grad-norm clip 1.0, constant LR, fp32 on CPU, `torch.set_num_threads(threads)`.
`--warmup` untimed optimizer steps, then `--steps` timed ones; step_s is the median.

  plain: chosen and rejected rows concatenated into one batch of 2*batch rows; r = model(input_ids,
         attention_mask).logits.squeeze(-1) (HF reads the score at the last non-pad token = the last token);
         loss = -logsigmoid(r_chosen - r_rejected).mean(); backward; clip_grad_norm_; opt.step(); zero_grad.
         Timed from just before the forward to just after zero_grad.
  trl:   trl.RewardTrainer + RewardConfig(per_device_train_batch_size=batch, max_length=seq_len, ...) on a
         pre-tokenized dataset with `chosen_ids` / `rejected_ids` columns (prompt + response ids), which TRL 1.x
         takes as already processed (no re-tokenization, no EOS appended); its collator stacks [chosen; rejected]
         into 2*batch rows and its compute_loss is the same -logsigmoid(r_c - r_r).mean(). Timed with a
         TrainerCallback from on_step_begin to on_step_end (forward, backward, clip, optimizer and scheduler step,
         zero_grad); step_interval_s (on_step_end to on_step_end) adds the dataloader/collation and per-step
         logging. RewardConfig defaults changed to match the definition: bf16 off (TRL defaults bf16=True),
         activation checkpointing off (TRL defaults it on), constant LR, sequential sampling. The Trainer's
         default optim="adamw_torch_fused" is kept and reported. TRL would pad with EOS when the tokenizer has no
         pad token, and then LlamaForSequenceClassification reads the score one token *before* the final EOS
         (pad == EOS is skipped as padding); the tokenizer's pad token is set to `<unk>` (id 0) instead, which TRL
         copies into model.config.pad_token_id.

pairs_per_s = batch / step_s; tokens_per_s = 2 * batch * seq_len / step_s (the tokens of both sequences of every
pair, as `rlhf bench reward` counts them). The script checks the first collated TRL batch against its own ids,
and reports per-step losses of both modes (they agree step for step: same data, same initial head).
Prints one JSON line on stdout; everything else goes to stderr.
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
from transformers import LlamaForSequenceClassification

BOS, EOS, PAD = 1, 2, 0
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_TOKENIZER = os.path.join(REPO, "assets", "tokenizer", "tokenizer.json")


def make_pairs(n: int, seq_len: int, prompt_len: int, vocab: int, seed: int):
    """(chosen_ids, rejected_ids), each (n, seq_len) int64, sharing their first prompt_len ids."""
    assert 2 <= prompt_len and prompt_len + 2 <= seq_len, "need BOS + prompt and >= 1 id + EOS per response"
    reply = seq_len - prompt_len  # response ids + EOS
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(3, vocab, (n, (prompt_len - 1) + 2 * (reply - 1)), generator=g)
    p, c = prompt_len - 1, reply - 1
    bos = torch.full((n, 1), BOS, dtype=torch.long)
    eos = torch.full((n, 1), EOS, dtype=torch.long)
    prompt = torch.cat([bos, body[:, :p]], dim=1)
    chosen = torch.cat([prompt, body[:, p : p + c], eos], dim=1)
    rejected = torch.cat([prompt, body[:, p + c :], eos], dim=1)
    assert chosen.shape == rejected.shape == (n, seq_len)
    return chosen, rejected


def load_model(path: str, seed: int):
    torch.manual_seed(seed)  # the new score head is initialised from the global RNG: same head in both modes
    model = LlamaForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch.float32, attn_implementation="sdpa", pad_token_id=PAD
    )
    model.config.use_cache = False
    return model


def make_optimizer(params, args):
    kw = dict(lr=1e-5, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    if args.adamw == "fused":
        kw["fused"] = True
    elif args.adamw == "foreach":
        kw["foreach"] = True
    return torch.optim.AdamW(params, **kw)


def run_plain(args, chosen, rejected):
    model = load_model(args.model, args.seed)
    model.train()
    opt = make_optimizer(model.parameters(), args)
    b = args.batch
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        x = torch.cat([chosen[step * b : (step + 1) * b], rejected[step * b : (step + 1) * b]], dim=0)
        mask = torch.ones_like(x)
        t0 = time.perf_counter()
        r = model(input_ids=x, attention_mask=mask, use_cache=False).logits.squeeze(-1)
        r_c, r_r = r[:b], r[b:]
        loss = -torch.nn.functional.logsigmoid(r_c - r_r).mean()
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
        "optimizer": f"torch.optim.AdamW({args.adamw})",
        "pad_token_id": model.config.pad_token_id,
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
    # Not EOS (TRL's fallback): pad == EOS would make the model read the score before the final EOS.
    tok.pad_token = "<unk>"
    assert tok.pad_token_id == PAD, tok.pad_token_id
    return tok


def run_trl(args, chosen, rejected):
    import datasets
    import trl
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

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

    # Pre-tokenized preference data: TRL 1.x treats a dataset with `chosen_ids` and `rejected_ids` as processed.
    ds = datasets.Dataset.from_dict({"chosen_ids": chosen.tolist(), "rejected_ids": rejected.tolist()})
    config = RewardConfig(
        output_dir=os.path.join(args.workdir, "trl-rm-bench"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_length=args.seq_len,
        learning_rate=1e-5,
        adam_beta1=0.9,
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
        dataloader_num_workers=0,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # TRL defaults to on; the plain loop does not recompute activations
        center_rewards_coefficient=None,
        # Not in the benchmark definition; they do not change the step itself: same batch order as `plain`,
        # no progress bar on the terminal, a fixed seed.
        train_sampling_strategy="sequential",
        disable_tqdm=True,
        seed=args.seed,
    )
    clock = StepClock()
    model = load_model(args.model, args.seed)
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=ds,
        processing_class=load_tokenizer(args.model),
        callbacks=[clock],
    )
    assert len(trainer.train_dataset) == len(ds), "TRL dropped rows (max_length filter?)"

    # Check what the trainer will actually train on: [chosen; rejected] rows of our ids, no padding, no margin.
    batch = next(iter(trainer.get_train_dataloader()))
    bi, bm = batch["input_ids"].cpu(), batch["attention_mask"].cpu()
    exp = torch.cat([chosen[: args.batch], rejected[: args.batch]], dim=0)
    same_ids = bi.shape == exp.shape and torch.equal(bi, exp) and bool((bm == 1).all()) and "margin" not in batch
    if not same_ids:
        print(f"first batch check FAILED: shape {tuple(bi.shape)} vs {tuple(exp.shape)}", file=sys.stderr)

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
        "peer": "trl-rewardtrainer",
        "step_times_s": dur[args.warmup :],
        "step_interval_s": statistics.median(intervals) if intervals else None,
        "losses": clock.losses,
        "same_token_ids_as_plain": same_ids,
        "dataset_format": "pre-tokenized: chosen_ids + rejected_ids (prompt + response each)",
        "optimizer": f"{type(opt).__module__}.{type(opt).__name__} (optim={config.optim}, "
        f"fused={group0.get('fused')}, foreach={group0.get('foreach')})",
        "activation_checkpointing": bool(
            getattr(trainer.model, "is_activation_checkpointing", None)
            if hasattr(trainer.model, "is_activation_checkpointing")
            else getattr(trainer.model, "is_gradient_checkpointing", False)
        ),
        "pad_token_id": trainer.model.config.pad_token_id,
        "threads_during_steps": sorted(set(clock.threads)),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trl": trl.__version__,
        "accelerate": __import__("accelerate").__version__,
        "datasets": datasets.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description="reward-model training throughput peer of `rlhf bench reward`")
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["plain", "trl"], required=True)
    ap.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens of each full sequence (prompt + response)")
    ap.add_argument("--prompt-len", type=int, default=192, help="shared prompt tokens incl. BOS")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--adamw",
        choices=["default", "foreach", "fused"],
        default="default",
        help="plain mode: torch.optim.AdamW implementation (the Trainer in trl mode uses optim='adamw_torch_fused')",
    )
    ap.add_argument("--workdir", default=os.path.join(REPO, "runs", "peer-tmp"), help="trl output_dir parent")
    args = ap.parse_args()
    assert args.steps >= 1 and args.warmup >= 0

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    vocab = transformers.AutoConfig.from_pretrained(args.model).vocab_size
    n = args.batch * (args.warmup + args.steps)
    chosen, rejected = make_pairs(n, args.seq_len, args.prompt_len, vocab, args.seed)

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout to the one JSON line
        res = run_plain(args, chosen, rejected) if args.mode == "plain" else run_trl(args, chosen, rejected)

    step_s = statistics.median(res["step_times_s"])
    out = {
        "peer": res.pop("peer"),
        "pairs_per_s": args.batch / step_s,
        "step_s": step_s,
        "tokens_per_s": 2 * args.batch * args.seq_len / step_s,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "prompt_len": args.prompt_len,
        "rows_per_step": 2 * args.batch,
        "layout": "chosen and rejected as separate full rows (shared prompt encoded twice)",
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
