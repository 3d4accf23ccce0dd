#!/usr/bin/env python3
"""Writes configs/pipeline-llama2-{7b,13b,70b}.toml from the per-stage Llama 2 configs, so the
pipeline configs carry exactly their hyperparameters. Run after changing a per-stage config."""
import re, pathlib
C = pathlib.Path(__file__).resolve().parent.parent / 'configs'

def body(name, subs, drop_comments=True, after=None):
    """Per-stage config file -> the text under [stages.config], tables renamed; `after` maps a
    key to lines added after its line."""
    after = after or {}
    out = []
    for line in (C / name).read_text().splitlines():
        if line.startswith('#') and drop_comments:
            continue
        m = re.match(r'^\[(.+)\]$', line)
        if m:
            out.append(f'[stages.config.{m.group(1)}]')
            continue
        k = line.split('=')[0].strip()
        if k in subs:
            v = subs[k]
            if v is None:
                continue
            line = f'{k} = {v}'
        out.append(line)
        if k in after:
            out.extend(after[k])
    while out and out[-1] == '':
        out.pop()
    return '\n'.join(out)

def stage(name, kind, text, comment=''):
    c = ''.join(f'# {l}\n' for l in comment.splitlines()) if comment else ''
    return f'{c}[[stages]]\nname = "{name}"\nkind = "{kind}"\n[stages.config]\n{text}\n'

def mix(name, target):
    return stage(name, 'mix', f'target = "{target}"\ndata = ["data/preference_train.jsonl"]',
                 f'The Llama 2 {target} RM mixture of all comparisons (`kind` tags each row).')

# 70B training stages shard the weights too (ZeRO-3, docs/distributed.md): with checkpointing and
# the optimizer offloaded, each of WORLD_70B ranks holds 1/WORLD_70B of the fp32 state in host memory.
ZERO3 = {'gradient_checkpointing': ['zero_stage = 3']}
WORLD_70B = 16

def rm(name, target, size, lr):
    t = body(f'reward-llama2-7b-{target}.toml', {'model': '"${sft}"', 'train_data': f'["${{{target}_mix}}"]', 'lr': lr,
             'eval_data': '["data/preference_test.jsonl"]'}, after=ZERO3 if size == '70B' else None)
    return stage(name, 'reward', t, f'{target} RM from the SFT model, Section 3.2.2 (peak lr {lr}).')

def sft(size):
    return stage('sft', 'sft', body('sft-llama2-7b.toml', {'model': f'"checkpoints/Llama-2-{size.lower()}-hf"'},
                                    after=ZERO3 if size == '70B' else None),
                 'SFT, Section 3.1 (lr 2e-5 cosine, 64 x 4096 packed tokens, 2 epochs, answer tokens only).')

def ppo(size, policy, beta):
    subs = {'policy': f'"{policy}"', 'helpfulness_rm': '"${rm_helpfulness}"', 'safety_rm': '"${rm_safety}"', 'kl_beta': beta}
    if size == '13B':
        # `rlhf plan --stage ppo --preset 13b`: 92.4 GB at generation batch 32 / micro-batch 8;
        # generation batch 16 and micro-batches of 4 (still 64 per mini-batch): 82.9 GB of 85.9 (80 GiB).
        subs.update({'generation_batch_size': '16', 'micro_batch_size': '4', 'grad_accumulation': '16'})
    comment = f'PPO on top of the rejection-sampling policy (V5), Section 3.2.3: beta {beta}, lr 1e-6,\n512 prompts per iteration in mini-batches of 64.'
    after = None
    if size == '70B':
        # ZeRO-3 over WORLD_70B ranks: one generation batch of 32 prompts (512 / 16) and one
        # micro-batch of 4 rows (64 / 16) per rank; the frozen models sharded on the GPUs
        # (`offload_frozen` would put their shards in host memory, next to the optimizer state).
        subs.update({'micro_batch_size': '4', 'grad_accumulation': '16', 'offload_frozen': 'false'})
        after = ZERO3
        comment += PPO_70B
    t = body('ppo-llama2-7b.toml', subs, after=after)
    return stage('ppo', 'ppo', t, comment)

# `rlhf plan --stage ppo --preset 70b --world-size 16` (tests/shipped_configs.rs).
PPO_70B = '''
ZeRO-3 on 16 x 80 GB GPUs (docs/distributed.md, "PPO under ZeRO-3"): policy and value model
sharded with their optimizers (offloaded: 69 GB of host memory per model per rank), the reference
and both reward models sharded in bf16 (8.6 GB of each per GPU), one layer gathered at a time,
also while generating. `rlhf plan --stage ppo --preset 70b --world-size 16`: 49.3 GB per GPU
(KV cache of 32 rows 16.1 GB), 138 GB of host memory per rank (1.1 TB per node of 8). With less
host memory: 32 GPUs (generation_batch_size 16, micro_batch_size 2, grad_accumulation 32) halve it.'''

head = '''# Llama-2-{S} end to end as the paper runs it, one stage after the other (`rlhf pipeline run
# configs/pipeline-llama2-{s}.toml --out runs/llama2-{s}`); each stage carries the hyperparameters of
# the per-stage config it is built from (configs/sft-llama2-7b.toml, reward-llama2-7b-*.toml,
# rs-llama2-70b.toml, ppo-llama2-7b.toml: see their comments), with {note}.
# Data: data/sft.jsonl (SFT dialogs), data/preference_{{train,test}}.jsonl (comparisons with
# `kind`, `rating`, `source`), data/rlhf_prompts*.jsonl and data/ppo_prompts*.jsonl (prompts with
# `is_safety`). No `[pipeline] eval_prompts`: with real data there are no ground-truth judges; each
# stage's report carries its RM scores. Generated by tools/gen_pipeline_configs.py.
'''
HARDWARE = {
    '7B': '# Hardware: every training stage fits one 80 GB GPU (`rlhf plan`; tests/shipped_configs.rs).\n',
    '13B': '# Hardware: every training stage fits one 80 GB GPU (`rlhf plan`; tests/shipped_configs.rs).\n',
    '70B': '# Hardware: the bf16 weights alone are 138 GB, so 70B training shards them (zero_stage = 3, ZeRO-3,\n'
           f'# docs/distributed.md). SFT and both reward models run on {WORLD_70B} x 80 GB GPUs (2 nodes of 8; torchrun\n'
           f'# --nnodes 2 --nproc-per-node 8) with >= 600 GB of host memory per node (each rank keeps 1/{WORLD_70B}\n'
           f'# of the fp32 optimizer state there): `rlhf plan --world-size {WORLD_70B}` (tests/shipped_configs.rs).\n'
           '# PPO runs on the same 16 GPUs with ZeRO-3 for all five 70B models (the trained two with their\n'
           '# optimizers, the frozen reference and reward models sharded in bf16) and needs >= 1.2 TB of host\n'
           '# memory per node (see its stage). Every stage loads its models layer by layer (shard-on-load:\n'
           '# no GPU ever holds a whole 70B model; the PPO stage loads within its plan, docs/memory.md). Not\n'
           '# yet: a GPU run of any of it, and under ZeRO-3 PPO gathers every layer of the policy for each\n'
           '# decode step (slow generation, docs/distributed.md). The paper trained with FSDP (Section 3.2.3,\n'
           '# PPO) and reports no GPU counts for fine-tuning.\n',
}

def write(size, note, stages):
    s = size.lower()
    (C / f'pipeline-llama2-{s}.toml').write_text(head.format(S=size, s=s, note=note) + HARDWARE[size] + '\n' + '\n'.join(stages))

for size in ['7B', '13B']:
    s = size.lower()
    distill = stage('rs_distill', 'sft', body('sft-llama2-7b.toml', {'model': '"${sft}"',
        'train_data': '["runs/llama2-70b/rejection_sampling/pool.jsonl"]', 'train_on': '"last_turn"'}),
        'Rejection sampling ran with the 70B model only; the smaller models are fine-tuned on its\n'
        'best-of-K samples (Section 3.2.3): the pool of configs/pipeline-llama2-70b.toml, SFT recipe.')
    write(size, 'the 7B/13B values (RM lr 1e-5, KL beta 0.01) and the 70B model\'s rejection-sampling pool',
          [sft(size), mix('helpfulness_mix', 'helpfulness'), rm('rm_helpfulness', 'helpfulness', size, '1e-5'),
           mix('safety_mix', 'safety'), rm('rm_safety', 'safety', size, '1e-5'), distill, ppo(size, '${rs_distill}', '0.01')])

rs = stage('rejection_sampling', 'rejection_sampling', body('rs-llama2-70b.toml', {'policy': '"${sft}"',
      'helpfulness_rm': '"${rm_helpfulness}"', 'safety_rm': '"${rm_safety}"', 'start': '"${sft}"'}),
      'RLHF-V1..V4: four iterations of best-of-10 at T 1.2-1.3, the best sample per prompt kept across\niterations, fine-tuned from the SFT model each time.')
write('70B', 'the 70B values (RM lr 5e-6, KL beta 0.005) and rejection sampling with the 70B model itself',
      [sft('70B'), mix('helpfulness_mix', 'helpfulness'), rm('rm_helpfulness', 'helpfulness', '70B', '5e-6'),
       mix('safety_mix', 'safety'), rm('rm_safety', 'safety', '70B', '5e-6'), rs, ppo('70B', '${rejection_sampling}', '0.005')])
