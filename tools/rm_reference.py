#!/usr/bin/env python3
"""Reference values for the reward-model ranking loss, computed by TRL's own `RewardTrainer.compute_loss`.

    python tools/rm_reference.py [--out tests/fixtures/rm_loss_trl.json]

Writes fixed (chosen, rejected, margins) score vectors and the loss TRL computes for them, with and without
`center_rewards_coefficient`, for `reward::loss::ranking_loss(chosen, rejected, margins, center_coef)`.

How TRL is exercised (no re-implementation of its formula):
  * a real `trl.RewardTrainer` is built (tiny random LlamaForSequenceClassification, num_labels=1, on CPU, fp32,
    a 2-row pre-tokenized dataset) only so that `compute_loss` runs with a real trainer's `args`,
    `accelerator` and metrics state;
  * each case goes through TRL's `DataCollatorForPreference` (the trainer's own `data_collator`) as examples
    {"chosen_ids", "rejected_ids", "margin"} -- so `margin` reaches `compute_loss` exactly as in training
    (float32, collated by TRL) -- or without the `margin` key for the no-margin cases (TRL's other branch);
  * `trainer.compute_loss(stub, inputs)` is called with a stub model whose `logits` are the fixed scores
    stacked [chosen; rejected] as (2B, 1) float32 -- the layout TRL's collator produces and its
    `torch.chunk(outputs.logits.squeeze(-1), chunks=2)` splits;
  * `trainer.args.center_rewards_coefficient` is set per case: None (TRL adds no term) or 0.01.
It also checks the same call on the real tiny model: TRL's loss equals the formula below on the model's scores
read at the last token (pad id 0), and prints that check. Scores are rounded to float32 before they are
written, so the JSON doubles are exactly the float32 values TRL saw.

TRL 1.16.0 (trl/trainer/reward_trainer.py, RewardTrainer.compute_loss):
    rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
    if "margin" in inputs:
        loss = -nn.functional.logsigmoid(rewards_chosen - rewards_rejected - inputs["margin"]).mean()
    else:
        loss = -nn.functional.logsigmoid(rewards_chosen - rewards_rejected).mean()
    if self.args.center_rewards_coefficient is not None:
        loss += self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch

import transformers
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "rm_loss_trl.json")
DEFAULT_TOKENIZER = os.path.join(REPO, "assets", "tokenizer", "tokenizer.json")

# Llama 2 Table 27, in the order significantly better, better, slightly better, negligibly better / unsure.
MARGIN_SMALL = [1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0]
MARGIN_LARGE = [3.0, 2.0, 1.0, 0.0]
CENTER = 0.01


def f32(xs) -> list[float]:
    """Round to float32 and back to Python floats (exact doubles of the float32 values)."""
    return [float(v) for v in np.asarray(xs, dtype=np.float32)]


class StubScores(torch.nn.Module):
    """Stands in for the reward model: returns the given scores as (2B, 1) logits, ignoring the inputs."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids=None, attention_mask=None, **kw):
        assert input_ids.shape[0] == self.logits.shape[0], (input_ids.shape, self.logits.shape)
        return SequenceClassifierOutputWithPast(logits=self.logits.clone())


def formula_f64(chosen, rejected, margins, center):
    """Our definition, in float64: mean(-log sigmoid(c - r - m)) + center * mean((c + r)^2)."""
    c, r, m = (np.asarray(v, dtype=np.float64) for v in (chosen, rejected, margins))
    d = c - r - m
    nls = np.logaddexp(0.0, -d)  # -log sigmoid(d), stable
    return float(nls.mean() + center * ((c + r) ** 2).mean())


def make_cases() -> list[dict]:
    g = np.random.default_rng(20230718)  # Llama 2 paper date; any fixed seed
    cases = []

    def add(name, chosen, rejected, margins, margin_column, center, note=""):
        chosen, rejected = f32(chosen), f32(rejected)
        margins = [float(m) for m in margins]
        assert len(chosen) == len(rejected) == len(margins)
        cases.append(
            dict(name=name, chosen=chosen, rejected=rejected, margins=margins, margin_column=margin_column,
                 center_coef=center, note=note)
        )

    # 8 pairs, two of each rating bin; hand-picked scores (some pairs mis-ranked, one tie).
    c8 = [1.5, 0.2, -0.3, 2.0, 0.0, -1.0, 0.7, 3.1]
    r8 = [0.5, 0.9, -0.3, -1.0, 0.4, -2.5, 0.7, 1.0]
    bins8 = [0, 1, 2, 3, 0, 1, 2, 3]
    for center in (0.0, CENTER):
        tag = "centered" if center else "plain"
        add(f"small_margins_8_{tag}", c8, r8, [MARGIN_SMALL[b] for b in bins8], True, center,
            "Table 27 small margins; bins sig, better, slightly, negligible, twice")
        add(f"large_margins_8_{tag}", c8, r8, [MARGIN_LARGE[b] for b in bins8], True, center,
            "Table 27 large margins; same scores")
        add(f"no_margin_column_8_{tag}", c8, r8, [0.0] * 8, False, center,
            "no `margin` key in the examples: TRL's -logsigmoid(c - r) branch (margins listed as 0)")
        add(f"zero_margins_8_{tag}", c8, r8, [0.0] * 8, True, center,
            "`margin` column present, all 0 (margin = none)")
    # Seeded random scores, 16 pairs, random rating bins, rewards off-centre (mean ~ +1.5) so the centering
    # term matters.
    c16 = g.normal(2.0, 1.5, 16)
    r16 = g.normal(1.0, 1.5, 16)
    bins16 = g.integers(0, 4, 16).tolist()
    for center in (0.0, CENTER):
        tag = "centered" if center else "plain"
        add(f"random_small_16_{tag}", c16, r16, [MARGIN_SMALL[b] for b in bins16], True, center,
            "seeded normal scores, random bins, small margins")
        add(f"random_large_16_{tag}", c16, r16, [MARGIN_LARGE[b] for b in bins16], True, center,
            "seeded normal scores, random bins, large margins")
    # One pair (batch of 1).
    for center in (0.0, CENTER):
        tag = "centered" if center else "plain"
        add(f"single_pair_{tag}", [0.25], [1.75], [2.0 / 3.0], True, center, "B = 1, 'better', small margin")
    # Extreme scores: needs a numerically stable log-sigmoid (-log sigmoid(-45) = 45, -log sigmoid(45) ~ 2.9e-20).
    for center in (0.0, CENTER):
        tag = "centered" if center else "plain"
        add(f"extreme_4_{tag}", [30.0, -20.0, 40.0, -1e-3], [-15.0, 22.0, 39.0, 1e-3],
            [MARGIN_LARGE[0], MARGIN_LARGE[0], MARGIN_LARGE[2], MARGIN_LARGE[3]], True, center,
            "saturated log-sigmoid on both sides")
    return cases


def build_trainer(tokenizer_path: str, workdir: str):
    import datasets
    from trl import RewardConfig, RewardTrainer

    datasets.disable_progress_bars()
    tok = PreTrainedTokenizerFast(tokenizer_file=tokenizer_path, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.pad_token = "<unk>"  # id 0, so the model reads scores at the real last token (EOS is id 2)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, num_labels=1,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForSequenceClassification(cfg).float()
    with torch.no_grad():  # O(1) scores that differ clearly between positions, so a wrong read position shows
        model.score.weight.normal_(0.0, 1.0)
    ds = datasets.Dataset.from_dict({
        "chosen_ids": [[1, 5, 6, 2], [1, 7, 2]],
        "rejected_ids": [[1, 8, 2], [1, 9, 10, 11, 2]],
        "margin": [1.0, 0.0],
    })
    args = RewardConfig(
        output_dir=os.path.join(workdir, "trl-rm-reference"), report_to=[], save_strategy="no", use_cpu=True,
        bf16=False, fp16=False, activation_checkpointing=False, per_device_train_batch_size=2, disable_tqdm=True,
    )
    with contextlib.redirect_stdout(sys.stderr):
        trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.model.train()  # compute_loss's "train" branch, as during training
    return trainer


def trl_loss(trainer, chosen, rejected, margins, margin_column, center):
    b = len(chosen)
    examples = []
    for i in range(b):  # dummy ids; the stub ignores them, the collator only needs them to build the batch
        ex = {"chosen_ids": [1, 3 + i, 2], "rejected_ids": [1, 4 + i, 2]}
        if margin_column:
            ex["margin"] = margins[i]
        examples.append(ex)
    inputs = trainer.data_collator(examples)
    assert ("margin" in inputs) == margin_column
    logits = torch.tensor(chosen + rejected, dtype=torch.float32).unsqueeze(-1)
    trainer.args.center_rewards_coefficient = center if center else None
    with torch.no_grad():
        loss = trainer.compute_loss(StubScores(logits), inputs)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    return float(loss)


def real_model_check(trainer) -> dict:
    """TRL's loss through the actual tiny model (padded batch) equals the formula on the model's own scores."""
    model = trainer.model
    examples = [
        {"chosen_ids": [1, 5, 6, 7, 2], "rejected_ids": [1, 8, 2], "margin": 2.0 / 3.0},
        {"chosen_ids": [1, 9, 2], "rejected_ids": [1, 10, 11, 12, 13, 14, 2], "margin": 3.0},
    ]
    inputs = trainer.data_collator(examples)
    trainer.args.center_rewards_coefficient = CENTER
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, dict(inputs)))
        scores = []
        for ids in [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]:
            out = model(input_ids=torch.tensor([ids]), use_cache=False).logits  # unpadded, score at the last token
            scores.append(float(out.reshape(-1)[0]))
    b = len(examples)
    ref = formula_f64(scores[:b], scores[b:], [e["margin"] for e in examples], CENTER)
    return {"trl_loss": loss, "formula_on_last_token_scores": ref, "abs_diff": abs(loss - ref),
            "ok": abs(loss - ref) < 1e-5 * max(1.0, abs(ref)), "scores": scores,
            "pad_token_id": model.config.pad_token_id}


def main():
    ap = argparse.ArgumentParser(description="TRL RewardTrainer loss reference fixture")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="Llama-2 tokenizer.json (only to build the trainer)")
    args = ap.parse_args()

    import trl
    from trl import RewardTrainer

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    src = inspect.getsource(RewardTrainer.compute_loss)
    for needle in ("logsigmoid(rewards_chosen - rewards_rejected - inputs[\"margin\"]).mean()",
                   "center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)"):
        if needle not in src:
            sys.exit(f"installed TRL {trl.__version__}: RewardTrainer.compute_loss no longer contains {needle!r}; "
                     "re-read it before regenerating the fixture")

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args.tokenizer, tmp)
        cases = make_cases()
        worst = 0.0
        for c in cases:
            c["loss"] = trl_loss(trainer, c["chosen"], c["rejected"], c["margins"], c["margin_column"],
                                 c["center_coef"])
            c["loss_f64"] = formula_f64(c["chosen"], c["rejected"], c["margins"], c["center_coef"])
            c["trl_center_rewards_coefficient"] = c["center_coef"] if c["center_coef"] else None
            c["trl_version"] = trl.__version__
            rel = abs(c["loss"] - c["loss_f64"]) / max(1.0, abs(c["loss_f64"]))
            worst = max(worst, rel)
        check = real_model_check(trainer)

    doc = {
        "description": "TRL RewardTrainer.compute_loss on fixed scores (stub model), for "
        "reward::loss::ranking_loss(chosen, rejected, margins, center_coef). `loss` is TRL's float32 value; "
        "`loss_f64` is mean(-log sigmoid(c - r - m)) + center_coef * mean((c + r)^2) in float64 on the same "
        "float32 inputs. margin_column=false: TRL got no `margin` key (its no-margin branch); "
        "trl_center_rewards_coefficient=null: TRL added no centering term. Made by tools/rm_reference.py.",
        "formula": "loss = mean_i(-logsigmoid(chosen_i - rejected_i - margin_i)) "
        "+ center_coef * mean_i((chosen_i + rejected_i)^2)",
        "trl_source": "trl/trainer/reward_trainer.py RewardTrainer.compute_loss",
        "trl_compute_loss_lines": [ln.strip() for ln in src.splitlines()
                                   if "logsigmoid" in ln or "center_rewards_coefficient" in ln or "torch.chunk" in ln],
        "margins_table_27": {"small": MARGIN_SMALL, "large": MARGIN_LARGE,
                             "order": ["significantly_better", "better", "slightly_better", "negligibly_better"]},
        "tolerance_hint": {"abs": 1e-6, "rel": 1e-6},
        "max_rel_diff_trl_f32_vs_f64": worst,
        "real_model_check": check,
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "cases": [{k: c[k] for k in ("name", "chosen", "rejected", "margins", "center_coef", "loss", "loss_f64",
                                     "margin_column", "trl_center_rewards_coefficient", "trl_version", "note")}
                  for c in cases],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(json.dumps({"out": args.out, "cases": len(cases), "max_rel_diff_trl_f32_vs_f64": worst,
                      "real_model_check": check, "trl": trl.__version__}))
    if not check["ok"] or worst > 1e-6:
        sys.exit(1)


if __name__ == "__main__":
    main()
