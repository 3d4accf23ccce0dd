"""Check that transformers computes the same reward scores as `rlhf reward score`.

Usage: python tools/check_rm_scores.py --model RM_DIR --scored SCORED.jsonl [--n 50] [--atol 1e-4]

SCORED.jsonl is the output of `rlhf reward score --model RM_DIR --data PAIRS.jsonl --out SCORED.jsonl`
(single-turn prompts). Each prompt + reply is encoded in the Llama-2 chat format exactly as Meta's
`chat_completion` (`<s>[INST] {user} [/INST] {reply} </s>`, the tokenizer.json of RM_DIR, each
segment encoded separately), scored by `AutoModelForSequenceClassification` (fp32, eager), and
compared with our scores. Prints one JSON line; exits 1 on a mismatch.
"""
import argparse, json, sys
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification


def chat_ids(tok, prompt, reply):
    user = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    if not isinstance(prompt, str):
        assert len(prompt) == 1 and prompt[0]["role"] == "user", "single-turn prompts only"
    text = f"[INST] {user.strip()} [/INST] {reply.strip()} "
    return [1] + tok.encode(text, add_special_tokens=False).ids + [2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--scored", required=True)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--atol", type=float, default=1e-4)
    a = ap.parse_args()
    tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
    tok.encode_special_tokens = True
    model = AutoModelForSequenceClassification.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
    worst, n = 0.0, 0
    with open(a.scored) as f:
        for line in f:
            row = json.loads(line)
            for reply, ours in ((row["chosen"], row["chosen_score"]), (row["rejected"], row["rejected_score"])):
                ids = torch.tensor([chat_ids(tok, row["prompt"], reply)])
                with torch.no_grad():
                    hf = model(input_ids=ids).logits[0, 0].item()
                worst = max(worst, abs(hf - ours))
                n += 1
            if n >= 2 * a.n:
                break
    ok = worst <= a.atol
    print(json.dumps({"responses": n, "max_abs_diff": worst, "atol": a.atol, "ok": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
