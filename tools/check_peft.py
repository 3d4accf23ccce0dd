"""Checks that `peft` loads an adapter folder written by `rlhf` (LoRA `final/`) and computes what
our merged checkpoint computes.

    python tools/check_peft.py --adapter RUN/final [--merged RUN/final_merged] [--base DIR]

Loads the base model named by `adapter_config.json` (or --base) with transformers, applies the
adapter with `peft.PeftModel.from_pretrained`, and compares logits on fixed token ids with
(a) the base alone (they must differ: the adapter was really applied), (b) `merge_and_unload()`,
and (c) our `final_merged/` loaded by transformers, when given. Every adapter tensor in the file
must have been loaded into the PEFT model (no key silently ignored). Prints one JSON line;
exits 1 when a check fails. Needs `pip install transformers peft` (tools/requirements.txt).
"""
import argparse
import json
import os
import sys

import peft
import safetensors.torch
import torch
import transformers


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merged")
    ap.add_argument("--base")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()
    conf = json.load(open(os.path.join(a.adapter, "adapter_config.json")))
    base_dir = a.base or conf["base_model_name_or_path"]
    torch.manual_seed(0)
    # A reward or value model's adapter (SEQ_CLS) sits on a causal LM or a reward model; its
    # `score` head comes from the adapter (modules_to_save).
    seq_cls = conf.get("task_type") == "SEQ_CLS"
    auto = transformers.AutoModelForSequenceClassification if seq_cls else transformers.AutoModelForCausalLM
    kwargs = {"num_labels": 1} if seq_cls else {}
    base = auto.from_pretrained(base_dir, dtype=torch.float32, **kwargs)
    base.eval()
    vocab = base.config.vocab_size
    # One row for a scalar head: HF pools at the last non-pad token, which needs a pad id otherwise.
    ids = torch.randint(3, vocab, (1 if seq_cls else 2, 24), generator=torch.Generator().manual_seed(0))
    base_logits = logits(base, ids)

    model = peft.PeftModel.from_pretrained(base, a.adapter)
    model.eval()
    state = model.state_dict()
    saved = safetensors.torch.load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    unmatched = []
    for key, value in saved.items():
        # PEFT stores "base_model.model.<module>.lora_A.weight"; in the live model the adapter
        # name sits before ".weight" ("...lora_A.default.weight").
        live = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        if ".lora_" not in key:  # modules_to_save: the trained copy of the module
            stem, leaf = key.rsplit(".", 1)
            live = f"{stem}.modules_to_save.default.{leaf}"
        if live not in state or not torch.equal(state[live].float(), value.float()):
            unmatched.append(key)
    peft_logits = logits(model, ids)
    out = {
        "task_type": conf.get("task_type"),
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
        "adapter_tensors": len(saved),
        "adapter_tensors_not_loaded": unmatched,
        "max_abs_diff_peft_vs_base": (peft_logits - base_logits).abs().max().item(),
    }
    merged_model = model.merge_and_unload()
    out["max_abs_diff_peft_vs_merge_and_unload"] = (logits(merged_model, ids) - peft_logits).abs().max().item()
    ok = not unmatched and out["max_abs_diff_peft_vs_base"] > a.tolerance
    ok = ok and out["max_abs_diff_peft_vs_merge_and_unload"] <= a.tolerance
    if a.merged:
        ours = auto.from_pretrained(a.merged, dtype=torch.float32, **kwargs)
        ours.eval()
        out["max_abs_diff_peft_vs_rlhf_merged"] = (logits(ours, ids) - peft_logits).abs().max().item()
        ok = ok and out["max_abs_diff_peft_vs_rlhf_merged"] <= a.tolerance
    out["ok"] = bool(ok)
    print(json.dumps(out))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
