"""Check our TensorBoard event files with TensorBoard's own readers.

Usage: python tools/check_tensorboard.py RUN_DIR [--prefix NAME] [--expect EXPECT.json]

RUN_DIR holds the event files (`events.out.tfevents.*`) a run wrote. Checks, with
`tensorboard.backend.event_processing`:
  * the folder has exactly one event file, whose first event has file_version "brain.Event:2"
    (`event_file_loader.RawEventFileLoader` + `event_pb2`: every record read, CRCs checked by the
    reader);
  * no (tag, step) appears twice and every tag's steps strictly increase (what a resume must keep);
  * with --prefix and a `metrics.jsonl` in RUN_DIR: the scalars (`event_accumulator.EventAccumulator`)
    are exactly the numbers of metrics.jsonl, `<prefix>/<key>` at each line's `step` (nested objects
    `<prefix>/<key>/<field>`, arrays by index; strings, booleans and nulls left out), equal as float32;
  * with --expect: a JSON object {"scalars": {tag: {step: value}}, "texts": {tag: {step: text}}};
    every listed scalar and text summary (text plugin metadata, DT_STRING tensor) must be there
    with that value.
Prints one JSON line with what it read; exits 1 on any mismatch.
"""
import argparse, json, math, os, struct, sys

from tensorboard.backend.event_processing import event_accumulator, event_file_loader
from tensorboard.compat.proto import event_pb2


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def flatten(name, v, out):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return
    if isinstance(v, (int, float)):
        out[name] = float(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            flatten(f"{name}/{k}", x, out)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            flatten(f"{name}/{i}", x, out)


def tag_of(s):
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_./-" else "_" for c in s)


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--prefix")
    ap.add_argument("--expect")
    args = ap.parse_args()
    errors = []
    files = sorted(f for f in os.listdir(args.run_dir) if "tfevents" in f)
    if len(files) != 1:
        errors.append(f"{len(files)} event files in {args.run_dir}, expected 1: {files}")
    seen, last_step, n_events = set(), {}, 0
    for name in files:
        loader = event_file_loader.RawEventFileLoader(os.path.join(args.run_dir, name))
        for i, raw in enumerate(loader.Load()):
            e = event_pb2.Event.FromString(raw)
            n_events += 1
            if i == 0 and e.file_version != "brain.Event:2":
                errors.append(f"{name}: first event has file_version {e.file_version!r}")
            for v in e.summary.value:
                if (v.tag, e.step) in seen:
                    errors.append(f"{name}: {v.tag} step {e.step} appears twice")
                seen.add((v.tag, e.step))
                if v.tag in last_step and e.step <= last_step[v.tag]:
                    errors.append(f"{name}: {v.tag} step {e.step} after step {last_step[v.tag]}")
                last_step[v.tag] = e.step

    acc = event_accumulator.EventAccumulator(args.run_dir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: {s.step: s.value for s in acc.Scalars(t)} for t in tags["scalars"]}
    texts = {}
    for t in tags["tensors"]:
        if acc.SummaryMetadata(t).plugin_data.plugin_name != "text":
            continue
        texts[t] = {}
        for ev in acc.Tensors(t):
            if ev.tensor_proto.dtype != 7 or len(ev.tensor_proto.string_val) != 1:
                errors.append(f"text {t} step {ev.step}: not one DT_STRING value")
                continue
            texts[t][ev.step] = ev.tensor_proto.string_val[0].decode("utf-8")

    if args.prefix is not None:
        want = {}
        with open(os.path.join(args.run_dir, "metrics.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                step = rec.pop("step", None)
                if not isinstance(step, int):
                    continue
                flat = {}
                for k, v in rec.items():
                    flatten(f"{args.prefix}/{k}", v, flat)
                for k, v in flat.items():
                    want.setdefault(tag_of(k), {})[step] = v
        for t, steps in sorted(want.items()):
            got = scalars.get(t, {})
            if sorted(got) != sorted(steps):
                errors.append(f"scalar {t}: steps {sorted(got)}, metrics.jsonl has {sorted(steps)}")
                continue
            for s, v in steps.items():
                if not same(got[s], f32(v)):
                    errors.append(f"scalar {t} step {s}: {got[s]} != {v}")
        for t in sorted(set(scalars) - set(want)):
            if t.startswith(args.prefix + "/"):
                errors.append(f"scalar {t} is not in metrics.jsonl")

    if args.expect is not None:
        with open(args.expect) as f:
            expect = json.load(f)
        for t, steps in expect.get("scalars", {}).items():
            for s, v in steps.items():
                got = scalars.get(t, {}).get(int(s))
                if got is None or not same(got, f32(v)):
                    errors.append(f"scalar {t} step {s}: {got} != {v}")
        for t, steps in expect.get("texts", {}).items():
            for s, v in steps.items():
                got = texts.get(t, {}).get(int(s))
                if got != v:
                    errors.append(f"text {t} step {s}: {got!r} != {v!r}")

    print(
        json.dumps(
            {
                "files": files,
                "events": n_events,
                "scalar_tags": len(scalars),
                "scalar_points": sum(len(v) for v in scalars.values()),
                "text_tags": sorted(texts),
                "errors": errors[:20],
            }
        )
    )
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
