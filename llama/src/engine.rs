//! The rollout engine: continuous (in-flight) batching over a fixed set of decode slots.
//!
//! Every sampler of the recipe (rejection sampling's best-of-K, PPO's rollouts, the evaluations,
//! `rlhf generate`) goes through [`run`] ([`crate::generate::generate`] is a thin wrapper).
//!
//! * **Slots.** At most `slots` rows decode together. When a row ends (EOS, or its
//!   `max_new_tokens` budget) its slot is refilled with the next pending prompt: the prompt is
//!   prefilled once (with the other prompts admitted at the same step), its keys and values are
//!   copied into the K slots of its K samples, and the rows sample their first token from the
//!   prefill's logits in the next step, side by side with rows that are deep in their reply.
//!   With nothing left to admit, a batch whose rows have mostly ended is compacted (the cache and
//!   every per-row buffer keep only the live rows), so ended rows stop costing decode steps.
//! * **Cache.** One [`KvCache`] of `[slots, 2 KV, max_prompt + max_new, hd]` per layer, allocated
//!   once and reused: a row's prompt sits at positions `0..len` of its slot and its reply after
//!   it, so a row's cache index is its RoPE position. Each step writes one key/value per row at
//!   the row's own position ([`KvCache::set_row_positions`]) and attends over `0..span` with a
//!   mask `key <= position` per row; stale entries of an earlier occupant are never read.
//! * **Fused weights.** On CPU a small float32 model decodes through inference-only fused
//!   projections ([`crate::model::FusedWeights`], built at the start of each call from the current
//!   weights): fewer ops a step, the same bits (docs/rollout.md, "Fewer ops per step").
//! * **Draws.** Row `j` (sample j) of request `i` draws its uniforms from its own SplitMix64
//!   stream `row_rng(request.seed, j)`, the t-th draw for its t-th token; which slot it decodes
//!   in, next to which rows, in which order, changes nothing but float rounding (greedy tokens
//!   equal a row decoded alone; see `llama/tests/engine.rs`). The uniforms of a row are computed
//!   on the host when it is admitted and uploaded with its prefill, once.
//! * **Host syncs.** A step samples, records the token and the EOS flag on the device; the host
//!   knows every row's length and budget without looking, and reads the EOS flags only every
//!   `sync_every` steps (1 on CPU, where a read costs nothing; 4 on CUDA). A row that ended
//!   between two checks emits EOS (log-probability 0) until it is collected, as in a static batch.
//! * **Scheduling.** Pending prompts are admitted in [`Schedule`] order, while slots and the
//!   `max_tokens_in_flight` budget (prompt + budget positions of the rows in flight) allow.
//! * **Sharded models (ZeRO-3).** When the model's layers are sharded over the ranks of a
//!   distributed run, each forward is a chain of collectives, and the ranks (each with its own
//!   prompts) run in lockstep: before every prefill and decode point they agree whether any rank
//!   runs it, and the others run a one-token dummy forward; a rank done early keeps answering
//!   until every rank is done ([`Lockstep`]). Tokens are those the rank would sample alone.
use crate::error::{LlamaError, Result};
use crate::generate::{sample_with_uniforms, SamplingParams};
use crate::model::{FusedWeights, KvCache, Llama, Mask};
use crate::rng::SplitMix64;
use std::collections::VecDeque;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Admission order of pending prompts (it changes speed, never results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// In the order given.
    #[default]
    InOrder,
    /// Longest prompts first (their prefill is the largest; short ones fill the tail).
    LongestPromptFirst,
    /// Shortest prompts first.
    ShortestPromptFirst,
    /// Longest expected reply first ([`Request::expected_new_tokens`], unknown = the budget):
    /// long rows start early, short ones fill the gaps they leave, and the last step comes sooner.
    LongestExpectedFirst,
}

impl std::str::FromStr for Schedule {
    type Err = LlamaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "in_order" => Ok(Schedule::InOrder),
            "longest_prompt_first" => Ok(Schedule::LongestPromptFirst),
            "shortest_prompt_first" => Ok(Schedule::ShortestPromptFirst),
            "longest_expected_first" => Ok(Schedule::LongestExpectedFirst),
            _ => Err(LlamaError::Invalid(format!(
                "unknown schedule {s:?}: expected in_order, longest_prompt_first, shortest_prompt_first or longest_expected_first"
            ))),
        }
    }
}

/// How the engine batches.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Rows decoded together; 0 = every row of the call at once. Rounded down to a multiple of
    /// `num_samples`, at least one prompt's (the K rows of a prompt are admitted together, sharing its prefill).
    pub slots: usize,
    /// Bound on the positions (prompt + `max_new_tokens`) reserved by the rows in flight; 0 = none.
    pub max_tokens_in_flight: usize,
    pub schedule: Schedule,
    /// Refill a slot as soon as its row ends (continuous batching). Off: static batches, the next
    /// prompts wait until every row of the batch has ended.
    pub refill: bool,
    /// Shrink the batch to its live rows once nothing is left to admit and half the rows have ended.
    pub compact: bool,
    /// Read the EOS flags every this many steps; 0 = 1 on CPU, 4 on CUDA.
    pub sync_every: usize,
    /// libtorch intra-op threads while the engine runs on CPU; 0 = auto: one thread when a decode
    /// step is small (under [`SMALL_STEP_FLOPS`]), else the process's setting. A small step is a few
    /// hundred tiny ops, each too small to split: every parallel region only adds an OpenMP
    /// barrier, and on a loaded machine a barrier waits for the other thread to be scheduled
    /// (stories260K on the shared 2-core CPU: ~5 ms a step on one thread, 60-110 ms on two).
    /// The caller's setting is restored when the call returns.
    pub decode_threads: usize,
    /// Forward through the inference-only fused projections ([`crate::model::FusedWeights`]:
    /// two GEMMs a layer instead of five, RoPE and the cache write in fewer ops) where the model
    /// allows it (small, float32, CPU, no LoRA, not sharded). The same tokens and log-probs bit
    /// for bit; off only to compare (llama/tests/fused.rs).
    pub fused: bool,
}

/// A decode step of fewer multiply-adds than this (2 · parameters · slots) runs on one thread
/// on CPU ([`EngineConfig::decode_threads`] = 0): about 10 ms of one core's fp32 matmul.
pub const SMALL_STEP_FLOPS: f64 = 5e8;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig::continuous(0)
    }
}

impl EngineConfig {
    /// Continuous batching with compaction over `slots` slots (0 = all rows).
    pub fn continuous(slots: usize) -> Self {
        EngineConfig {
            slots,
            max_tokens_in_flight: 0,
            schedule: Schedule::InOrder,
            refill: true,
            compact: true,
            sync_every: 0,
            decode_threads: 0,
            fused: true,
        }
    }

    /// Static batches of `slots` rows (the pre-engine `generate`): no refill, no compaction.
    pub fn static_batches(slots: usize) -> Self {
        EngineConfig { refill: false, compact: false, ..EngineConfig::continuous(slots) }
    }
}

/// One prompt to sample `num_samples` continuations of.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Token ids, BOS included.
    pub prompt: &'a [u32],
    /// The prompt's stream seed: sample j draws from `row_rng(seed, j)`.
    pub seed: u64,
    /// A guess of the reply length, for [`Schedule::LongestExpectedFirst`].
    pub expected_new_tokens: Option<usize>,
}

/// A finished row, handed to the caller as soon as it is collected.
#[derive(Debug, Clone)]
pub struct RowOutput {
    /// Index of the request in the slice given to [`run`].
    pub request: usize,
    /// Sample index `0..num_samples`.
    pub sample: usize,
    /// New tokens, up to and including EOS when it was sampled.
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// Ended with EOS.
    pub finished: bool,
}

/// What a run cost.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStats {
    /// Decode steps (each samples one token for every row of the current batch).
    pub steps: usize,
    /// Sum over steps of the batch's rows: tokens sampled, useful or not.
    pub row_steps: usize,
    /// Tokens kept in the outputs (the useful ones).
    pub new_tokens: usize,
    pub prefill_tokens: usize,
    pub prefills: usize,
    pub compactions: usize,
    /// Host reads of the EOS flags.
    pub syncs: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Forwards run only to join other ranks' collectives (a sharded model; see [`Lockstep`]).
    pub lockstep_dummies: usize,
}

impl EngineStats {
    /// Share of the sampled row-steps whose token was kept.
    pub fn useful_fraction(&self) -> f64 {
        self.new_tokens as f64 / self.row_steps.max(1) as f64
    }
}

/// The stream seed of prompt `index` of a call seeded with `seed` (what `generate` gives its prompts).
pub fn prompt_seed(seed: u64, index: u64) -> u64 {
    SplitMix64::for_step(seed ^ 0x524f_4c4c_4f55_5400, index).next_u64() // "ROLLOUT"
}

/// The draw stream of sample `sample` of a prompt whose stream seed is `seed`.
pub fn row_rng(seed: u64, sample: u64) -> SplitMix64 {
    SplitMix64::for_step(seed, sample)
}

/// A live row of a slot (host side: everything but its EOS flag is known without a device read).
#[derive(Debug, Clone, Copy)]
struct Row {
    request: usize,
    sample: usize,
    /// Tokens sampled so far.
    steps: usize,
    /// Position of the next token fed to the model (= cached positions of the row).
    pos: i64,
}

/// Per-slot device buffers, all with the batch as first dimension.
struct Slots {
    cache: KvCache,
    /// Next-token logits `[B, V]` (float32).
    logits: Tensor,
    /// Sampling uniforms `[B, max_new]` (float64; undefined when greedy).
    uniforms: Option<Tensor>,
    /// Tokens sampled so far per row `[B]`, the column the next token is written to.
    step: Tensor,
    /// Position of the next token fed `[B]`.
    pos: Tensor,
    /// Additive attention mask `[B, 1, 1, capacity]` in the model's dtype: 0 at the positions a
    /// row may read (its prompt, then each position as the row writes it), -inf elsewhere. Kept
    /// across steps and updated by one `scatter_` a step, so a step neither builds a mask nor
    /// has SDPA convert a boolean one in every layer (5 of stories260K's ~300 ops a step).
    mask: Tensor,
    out_tokens: Tensor,
    out_logprobs: Tensor,
    ended: Tensor,
    rows: Vec<Option<Row>>,
}

impl Slots {
    fn select(&mut self, keep: &[usize], device: Device) {
        let idx = index_tensor(keep, device);
        self.cache.select_rows(&idx);
        for t in
            [&mut self.logits, &mut self.step, &mut self.pos, &mut self.mask, &mut self.out_tokens, &mut self.out_logprobs, &mut self.ended]
        {
            *t = t.index_select(0, &idx);
        }
        if let Some(u) = &mut self.uniforms {
            *u = u.index_select(0, &idx);
        }
        self.rows = keep.iter().map(|&s| self.rows[s]).collect();
    }
    fn live(&self) -> usize {
        self.rows.iter().flatten().count()
    }
}

fn index_tensor(v: &[usize], device: Device) -> Tensor {
    let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    Tensor::from_slice(&v).to_device(device)
}

/// Samples `p.num_samples` continuations of every request, calling `on_row` with each row as it
/// ends (rows come in completion order; `request`/`sample` say whose they are). Sampling follows
/// `p` (`seed` is unused: each request carries its own).
pub fn run<E: From<LlamaError>>(
    model: &Llama,
    requests: &[Request],
    p: &SamplingParams,
    ec: &EngineConfig,
    mut on_row: impl FnMut(RowOutput) -> std::result::Result<(), E>,
) -> std::result::Result<EngineStats, E> {
    let _guard = tch::no_grad_guard();
    let mut stats = EngineStats::default();
    let cfg = &model.cfg;
    let k = p.num_samples;
    if k == 0 {
        return Err(LlamaError::Invalid("num_samples must be at least 1".into()).into());
    }
    if let Some(i) = requests.iter().position(|r| r.prompt.is_empty()) {
        return Err(LlamaError::Invalid(format!("prompt {i} is empty (it needs at least BOS)")).into());
    }
    if let Some(bad) = requests.iter().flat_map(|r| r.prompt).find(|&&t| t as i64 >= cfg.vocab_size) {
        return Err(LlamaError::Invalid(format!("token id {bad} is outside the vocabulary ({})", cfg.vocab_size)).into());
    }
    let max_new = p.max_new_tokens;
    let max_len = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    if (max_len + max_new) as i64 > cfg.max_position_embeddings {
        return Err(LlamaError::Invalid(format!(
            "prompt length {max_len} + max new tokens {max_new} exceeds max_position_embeddings {}",
            cfg.max_position_embeddings
        ))
        .into());
    }
    if ec.max_tokens_in_flight > 0 {
        if let Some(r) = requests.iter().find(|r| k * (r.prompt.len() + max_new) > ec.max_tokens_in_flight) {
            return Err(LlamaError::Invalid(format!(
                "max_tokens_in_flight {} cannot hold one prompt of {} tokens with {k} samples of {max_new} new tokens",
                ec.max_tokens_in_flight,
                r.prompt.len()
            ))
            .into());
        }
    }
    // The same for every rank of a run (a setting), so it is decided before any collective.
    if max_new == 0 {
        for (i, j) in (0..requests.len()).flat_map(|i| (0..k).map(move |j| (i, j))) {
            on_row(RowOutput { request: i, sample: j, tokens: vec![], logprobs: vec![], finished: false })?;
        }
        return Ok(stats);
    }
    let lock = Lockstep::of(model);
    if requests.is_empty() {
        if let Some(l) = &lock {
            l.idle(model, &mut stats)?;
        }
        return Ok(stats);
    }
    let device = model.device();
    let total_rows = requests.len() * k;
    // Whole prompts only (their K rows share one prefill): a multiple of K, at least K.
    let slots = if ec.slots == 0 { total_rows } else { (ec.slots.max(k) / k * k).min(total_rows) };
    let sync_every = if ec.sync_every > 0 {
        ec.sync_every
    } else if device.is_cuda() {
        4
    } else {
        1
    };
    let threads = ThreadScope::enter(decode_threads(model, slots, ec.decode_threads));
    // Built (and probed) under the decode thread setting, from the weights as they are now.
    let fused = if ec.fused { model.fused_weights() } else { None };
    let capacity = (max_len + max_new) as i64;
    let eos = p.eos_token_id;
    let greedy = p.temperature <= 0.0;

    let mut pending: VecDeque<usize> = schedule_order(requests, ec.schedule, max_new).into();
    let b = slots as i64;
    let mut s = Slots {
        cache: KvCache::new(cfg, b, capacity, device, model.kind()),
        logits: Tensor::zeros([b, cfg.vocab_size], (Kind::Float, device)),
        uniforms: (!greedy).then(|| Tensor::zeros([b, max_new as i64], (Kind::Double, device))),
        step: Tensor::zeros([b], (Kind::Int64, device)),
        pos: Tensor::zeros([b], (Kind::Int64, device)),
        mask: Tensor::full([b, 1, 1, capacity], f64::NEG_INFINITY, (model.kind(), device)),
        out_tokens: Tensor::zeros([b, max_new as i64], (Kind::Int64, device)),
        out_logprobs: Tensor::zeros([b, max_new as i64], (Kind::Float, device)),
        ended: Tensor::zeros([b], (Kind::Bool, device)),
        rows: vec![None; slots],
    };
    let mut in_flight = 0usize; // reserved positions of the rows in flight
    let start = Instant::now();
    let mut since_sync = 0usize;
    loop {
        // 1. Admit pending prompts into free slots (static: only into an empty batch).
        // A refill waits until a quarter of the slots (at least one prompt's K) are free, or the
        // batch is idle: each admission is one prefill forward, which on a small model costs about
        // a decode step whatever its size, so admitting one prompt per step would double the steps.
        let free_now = s.rows.iter().filter(|r| r.is_none()).count();
        let group = (s.rows.len() / 4).max(k).min(pending.len() * k);
        let mut admitted: Vec<(usize, Vec<usize>)> = Vec::new();
        let t0 = Instant::now();
        let admitting = !pending.is_empty() && ((ec.refill && free_now >= group) || s.live() == 0);
        if admitting {
            let mut free: Vec<usize> = (0..s.rows.len()).filter(|&i| s.rows[i].is_none()).collect();
            free.reverse();
            while let Some(&r) = pending.front() {
                let need = k * (requests[r].prompt.len() + max_new);
                if free.len() < k || (ec.max_tokens_in_flight > 0 && in_flight + need > ec.max_tokens_in_flight) {
                    break;
                }
                pending.pop_front();
                in_flight += need;
                let dst: Vec<usize> = (0..k).map(|_| free.pop().unwrap_or_default()).collect();
                for (j, &d) in dst.iter().enumerate() {
                    s.rows[d] = Some(Row { request: r, sample: j, steps: 0, pos: requests[r].prompt.len() as i64 });
                }
                admitted.push((r, dst));
            }
        }
        if let Some(l) = &lock {
            // Every rank prefills (a real or a dummy forward) when any rank does.
            l.prefill(model, !admitted.is_empty(), &mut stats)?;
        }
        if !admitted.is_empty() {
            prefill_into(model, fused.as_ref(), requests, &admitted, &mut s, p, max_new, &mut stats)?;
        }
        if admitting {
            stats.prefill_seconds += t0.elapsed().as_secs_f64();
        }
        if s.live() == 0 {
            if pending.is_empty() {
                break;
            }
            return Err(LlamaError::Invalid("the engine could not admit a pending prompt".into()).into());
        }

        // 2. Sample one token per row, each from its own uniform stream, and record it on the device.
        let bsz = s.rows.len() as i64;
        let col = s.step.clamp_max(max_new as i64 - 1).unsqueeze(1);
        let u = s.uniforms.as_ref().map(|u| u.gather(1, &col, false));
        let (mut tok, mut lp) = sample_with_uniforms(&s.logits, p, u.as_ref());
        if p.stop_at_eos {
            tok = tok.masked_fill(&s.ended, eos);
            lp = lp.masked_fill(&s.ended, 0.0);
            s.ended = s.ended.logical_or(&tok.eq(eos));
        }
        let _ = s.out_tokens.scatter_(1, &col, &tok.unsqueeze(1));
        let _ = s.out_logprobs.scatter_(1, &col, &lp.unsqueeze(1));
        stats.steps += 1;
        stats.row_steps += bsz as usize;
        for r in s.rows.iter_mut().flatten() {
            r.steps += 1;
        }
        since_sync += 1;

        // 3. Collect ended rows: at their budget (known here), or at EOS (read every few steps).
        let mut done: Vec<usize> = (0..s.rows.len()).filter(|&i| s.rows[i].is_some_and(|r| r.steps >= max_new)).collect();
        if p.stop_at_eos && (since_sync >= sync_every || !done.is_empty()) {
            since_sync = 0;
            stats.syncs += 1;
            let ended: Vec<bool> = Vec::try_from(s.ended.to_device(Device::Cpu)).map_err(LlamaError::from)?;
            done =
                (0..s.rows.len()).filter(|&i| s.rows[i].is_some() && (ended[i] || s.rows[i].is_some_and(|r| r.steps >= max_new))).collect();
        }
        if !done.is_empty() {
            let idx = index_tensor(&done, device);
            let toks: Vec<i64> =
                Vec::try_from(s.out_tokens.index_select(0, &idx).to_device(Device::Cpu).reshape([-1])).map_err(LlamaError::from)?;
            let lps: Vec<f32> =
                Vec::try_from(s.out_logprobs.index_select(0, &idx).to_device(Device::Cpu).reshape([-1])).map_err(LlamaError::from)?;
            for (n, &slot) in done.iter().enumerate() {
                let row = s.rows[slot].take().unwrap_or(Row { request: 0, sample: 0, steps: 0, pos: 0 });
                let t = &toks[n * max_new..n * max_new + row.steps];
                let end = if p.stop_at_eos { t.iter().position(|&x| x == eos).map(|i| i + 1) } else { None };
                let len = end.unwrap_or(t.len());
                stats.new_tokens += len;
                in_flight -= requests[row.request].prompt.len() + max_new;
                let out = RowOutput {
                    request: row.request,
                    sample: row.sample,
                    tokens: t[..len].iter().map(|&x| x as u32).collect(),
                    logprobs: lps[n * max_new..n * max_new + len].to_vec(),
                    finished: end.is_some(),
                };
                threads.outside(|| on_row(out))?;
            }
        }
        let live = s.live();
        if live == 0 && pending.is_empty() {
            break;
        }
        // 4. Compaction: nothing left to admit and at most half the rows alive.
        if ec.compact && pending.is_empty() && live * 2 <= s.rows.len() && live > 0 {
            let keep: Vec<usize> = (0..s.rows.len()).filter(|&i| s.rows[i].is_some()).collect();
            s.select(&keep, device);
            stats.compactions += 1;
        }
        if live == 0 {
            if let Some(l) = &lock {
                l.decode(model, false, &mut stats)?;
            }
            continue; // a static batch ended: admit the next one
        }

        // 5. One decode step: every row feeds its token at its own position.
        let bsz = s.rows.len() as i64;
        let span = s.rows.iter().flatten().map(|r| r.pos).max().unwrap_or(0) + 1;
        let tok = if bsz == tok.size()[0] {
            tok
        } else {
            s.out_tokens.gather(1, &s.step.clamp_max(max_new as i64 - 1).unsqueeze(1), false).squeeze_dim(1)
        };
        if let Some(l) = &lock {
            l.decode(model, true, &mut stats)?;
        }
        s.cache.set_row_positions(&s.pos, span);
        // The row's new key at `pos` becomes readable: each row reads keys 0..=pos (= `key <= pos`).
        let _ = s.mask.scatter_value_(3, &s.pos.view([bsz, 1, 1, 1]), 0.0);
        let mask = Mask::Explicit(s.mask.narrow(3, 0, span));
        let hidden = model.forward_with(&tok.view([bsz, 1]), &s.pos.view([bsz, 1]), &mask, Some(&mut s.cache), fused.as_ref());
        s.logits = model.lm_logits(&hidden.squeeze_dim(1));
        let _ = s.pos.g_add_scalar_(1).clamp_max_(capacity - 1);
        let _ = s.step.g_add_scalar_(1);
        for r in s.rows.iter_mut().flatten() {
            r.pos += 1;
        }
    }
    if let Some(l) = &lock {
        // This rank's rows are done: it keeps joining the others' forwards until theirs are.
        l.drain(model, &mut stats)?;
    }
    if device.is_cuda() {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    }
    stats.decode_seconds = (start.elapsed().as_secs_f64() - stats.prefill_seconds).max(0.0);
    Ok(stats)
}

/// Generation with a sharded model (ZeRO-3, [`crate::model::ShardHooks`]): every forward gathers
/// each decoder layer from all ranks, so every rank must run the same number of forwards in the
/// same order, whatever its own rows do. Each loop of [`run`] has two points where a forward may
/// happen, the prefill of newly admitted prompts and the decode step; before each, the ranks
/// agree (one small all-reduce, max) on whether any rank runs it, and a rank that has none
/// of its own runs a dummy forward (one token, no cache: its layers are gathered and the output
/// dropped). A rank whose rows have all ended leaves the loop and *drains*: it answers the decode
/// point, then the next prefill point, with dummies while any rank still has work; the prefill
/// point carries a second flag, "this rank is still in its loop", and when no rank is, every rank
/// leaves. So ranks with different prompts, lengths and EOS times issue identical collectives.
/// Cost: two small all-reduces per step (a host sync each), and the idle ranks' dummy forwards
/// cost what a real one costs in communication (each still gathers every layer).
struct Lockstep {
    dist: &'static distributed::Dist,
}

impl Lockstep {
    /// Lockstep for `model` when its layers are sharded over the ranks of a distributed run.
    fn of(model: &Llama) -> Option<Lockstep> {
        let dist = distributed::get().filter(|d| d.world_size > 1)?;
        model.is_sharded().then_some(Lockstep { dist })
    }

    /// Whether any rank's flag is set, element-wise.
    fn any<const N: usize>(&self, mine: [bool; N]) -> Result<[bool; N]> {
        let t = Tensor::from_slice(&mine.map(|b| if b { 1f32 } else { 0.0 }));
        self.dist
            .all_reduce(&t, distributed::ReduceOp::Max)
            .map_err(|e| LlamaError::Invalid(format!("generation with a sharded model: {e}")))?;
        let v = Vec::<f32>::try_from(&t)?;
        Ok(std::array::from_fn(|i| v[i] > 0.0))
    }

    /// A forward whose output nobody reads: the collectives of a real one.
    fn dummy(model: &Llama, stats: &mut EngineStats) {
        let device = model.device();
        let ids = Tensor::zeros([1, 1], (Kind::Int64, device));
        let _ = model.forward(&ids, &ids, &Mask::Causal, None);
        stats.lockstep_dummies += 1;
    }

    /// The prefill point of a rank still in its loop: `mine` = it prefills now.
    fn prefill(&self, model: &Llama, mine: bool, stats: &mut EngineStats) -> Result<()> {
        let [any, _] = self.any([mine, true])?;
        if any && !mine {
            Self::dummy(model, stats);
        }
        Ok(())
    }

    /// The decode point: `mine` = this rank decodes now. Returns whether any rank does.
    fn decode(&self, model: &Llama, mine: bool, stats: &mut EngineStats) -> Result<bool> {
        let [any] = self.any([mine])?;
        if any && !mine {
            Self::dummy(model, stats);
        }
        Ok(any)
    }

    /// After this rank's rows are done (it left its loop before a decode point): dummies at every
    /// point where another rank runs a forward, until no rank is in its loop.
    fn drain(&self, model: &Llama, stats: &mut EngineStats) -> Result<()> {
        self.decode(model, false, stats)?;
        self.idle(model, stats)
    }

    /// [`Lockstep::drain`] from a prefill point (a rank given no prompt at all).
    fn idle(&self, model: &Llama, stats: &mut EngineStats) -> Result<()> {
        loop {
            let [prefill, running] = self.any([false, false])?;
            if !running {
                return Ok(());
            }
            if prefill {
                Self::dummy(model, stats);
            }
            self.decode(model, false, stats)?;
        }
    }
}

/// The intra-op threads a call decodes with (`None`: leave the setting alone; CUDA always).
fn decode_threads(model: &Llama, slots: usize, asked: usize) -> Option<usize> {
    if model.device().is_cuda() {
        return None;
    }
    if asked > 0 {
        return Some(asked);
    }
    let c = &model.cfg;
    let (d, hd) = (c.hidden_size as f64, c.head_dim as f64);
    let per_layer =
        d * hd * (2.0 * c.num_attention_heads as f64 + 2.0 * c.num_key_value_heads as f64) + 3.0 * d * c.intermediate_size as f64;
    let params = c.num_hidden_layers as f64 * per_layer + c.vocab_size as f64 * d;
    (2.0 * params * (slots as f64) < SMALL_STEP_FLOPS).then_some(1)
}

/// Sets libtorch's intra-op threads for the engine's call and restores the caller's on drop.
struct ThreadScope(Option<i32>);

impl ThreadScope {
    fn enter(threads: Option<usize>) -> Self {
        let before = tch::get_num_threads();
        match threads {
            Some(n) if n as i32 != before => {
                tch::set_num_threads(n as i32);
                ThreadScope(Some(before))
            }
            _ => ThreadScope(None),
        }
    }
}

impl ThreadScope {
    /// Runs `f` (the caller's callback) with the caller's own thread setting.
    fn outside<R>(&self, f: impl FnOnce() -> R) -> R {
        let Some(before) = self.0 else { return f() };
        let inside = tch::get_num_threads();
        tch::set_num_threads(before);
        let r = f();
        tch::set_num_threads(inside);
        r
    }
}

impl Drop for ThreadScope {
    fn drop(&mut self) {
        if let Some(n) = self.0 {
            tch::set_num_threads(n);
        }
    }
}

/// Admission order of the requests.
fn schedule_order(requests: &[Request], schedule: Schedule, max_new: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    let len = |i: usize| requests[i].prompt.len();
    let expected = |i: usize| requests[i].expected_new_tokens.unwrap_or(max_new).min(max_new);
    // Stable sorts: ties keep the given order.
    match schedule {
        Schedule::InOrder => {}
        Schedule::LongestPromptFirst => order.sort_by_key(|&i| std::cmp::Reverse(len(i))),
        Schedule::ShortestPromptFirst => order.sort_by_key(|&i| len(i)),
        Schedule::LongestExpectedFirst => order.sort_by_key(|&i| std::cmp::Reverse(expected(i))),
    }
    order
}

/// Prefills the admitted prompts in one right-padded forward and installs each into the slots of
/// its samples: cache rows, first logits, uniforms, positions, step counters, EOS flags.
#[allow(clippy::too_many_arguments)]
fn prefill_into(
    model: &Llama,
    fused: Option<&FusedWeights>,
    requests: &[Request],
    admitted: &[(usize, Vec<usize>)],
    s: &mut Slots,
    p: &SamplingParams,
    max_new: usize,
    stats: &mut EngineStats,
) -> Result<()> {
    let device = model.device();
    let n = admitted.len() as i64;
    let lens: Vec<i64> = admitted.iter().map(|(r, _)| requests[*r].prompt.len() as i64).collect();
    let l = lens.iter().copied().max().unwrap_or(1);
    // Right padding: a valid query only sees keys at or before it, all of its own prompt.
    let mut ids = vec![0i64; (n * l) as usize];
    for (i, (r, _)) in admitted.iter().enumerate() {
        for (j, &t) in requests[*r].prompt.iter().enumerate() {
            ids[i * l as usize + j] = t as i64;
        }
    }
    let ids = Tensor::from_slice(&ids).view([n, l]).to_device(device);
    let positions = Tensor::arange(l, (Kind::Int64, device)).unsqueeze(0).expand([n, l], false);
    let mut tmp = KvCache::new(&model.cfg, n, l, device, model.kind());
    let hidden = model.forward_with(&ids, &positions, &Mask::Causal, Some(&mut tmp), fused);
    let last = Tensor::from_slice(&lens).to_device(device) - 1;
    let d = hidden.size()[2];
    let logits = model.lm_logits(&hidden.gather(1, &last.view([n, 1, 1]).expand([n, 1, d], false), false).squeeze_dim(1));

    let mut src = Vec::new();
    let mut dst = Vec::new();
    let mut pos = Vec::new();
    let mut uniforms = Vec::new();
    for (i, (r, slots)) in admitted.iter().enumerate() {
        for (j, &slot) in slots.iter().enumerate() {
            src.push(i as i64);
            dst.push(slot as i64);
            pos.push(lens[i]);
            if p.temperature > 0.0 {
                uniforms.extend(row_rng(requests[*r].seed, j as u64).uniforms(max_new));
            }
        }
    }
    let m = dst.len() as i64;
    let src = Tensor::from_slice(&src).to_device(device);
    let dst = Tensor::from_slice(&dst).to_device(device);
    s.cache.copy_rows(&tmp, &src, &dst);
    let _ = s.logits.index_copy_(0, &dst, &logits.index_select(0, &src));
    if let Some(u) = &mut s.uniforms {
        let _ = u.index_copy_(0, &dst, &Tensor::from_slice(&uniforms).view([m, max_new as i64]).to_device(device));
    }
    let pos = Tensor::from_slice(&pos).to_device(device);
    // A row reads its prompt, positions 0..len; what an earlier occupant of the slot wrote stays hidden.
    let cap = s.mask.size()[3];
    let unread = Tensor::arange(cap, (Kind::Int64, device)).view([1, cap]).ge_tensor(&pos.view([m, 1]));
    let rows = Tensor::zeros([m, cap], (s.mask.kind(), device)).masked_fill(&unread, f64::NEG_INFINITY);
    let _ = s.mask.view([-1, cap]).index_copy_(0, &dst, &rows);
    let _ = s.pos.index_copy_(0, &dst, &pos);
    let _ = s.step.index_fill_(0, &dst, 0);
    let _ = s.ended.index_fill_(0, &dst, 0);
    stats.prefills += 1;
    stats.prefill_tokens += lens.iter().sum::<i64>() as usize;
    Ok(())
}
