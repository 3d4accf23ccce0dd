//! The rollout engine: a row's tokens do not depend on the batch it decodes in (slots, refill,
//! compaction, schedule, token budget), greedy rows equal the row decoded alone, rows stream out
//! as they end, and continuous batching computes fewer row-steps than static batches.
use llama::engine::{self, prompt_seed, EngineConfig, Request, RowOutput, Schedule};
use llama::{checkpoint, generate, generate_with, Llama, SamplingParams};
use std::path::Path;
use tch::{Device, Kind};

fn model() -> (tch::nn::VarStore, Llama) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gqa");
    checkpoint::load_causal_lm(&dir, Device::Cpu, Kind::Float).unwrap()
}

/// The fixture with a sharper LM head and an EOS (id 2) whose logit swings widely: peaked
/// distributions like a trained model's, and replies that end at many different lengths. (The
/// random fixture's next-token distributions are nearly flat over 32,000 tokens, where a 1e-7
/// rounding difference in the CDF moves a draw across a token boundary about once in a hundred.)
fn peaked_model() -> (tch::nn::VarStore, Llama) {
    let (vs, m) = model();
    tch::no_grad(|| {
        let mut w = m.lm_head.as_ref().unwrap().weight.shallow_clone();
        let _ = w.g_mul_scalar_(4.0);
        let _ = w.get(2).g_mul_scalar_(5.0);
    });
    (vs, m)
}

/// Log-probabilities agree to 4e-5: the fixture's 1e-5 (see the greedy test) times the head's
/// scale of 4, which scales the logits' rounding too.
fn lp_close(a: &RowOutput, b: &RowOutput) -> bool {
    a.logprobs.iter().zip(&b.logprobs).all(|(x, y)| (x - y).abs() <= 4e-5)
}

/// Prompts of lengths 2..=9.
fn prompts() -> Vec<Vec<u32>> {
    (0..8u32).map(|i| (0..i + 2).map(|j| if j == 0 { 1 } else { 100 + 37 * i + 11 * j }).collect()).collect()
}

/// Runs the engine and returns the rows in request-major order, plus the order they came out in.
fn run(m: &Llama, reqs: &[Request], p: &SamplingParams, ec: &EngineConfig) -> (Vec<RowOutput>, Vec<(usize, usize)>, engine::EngineStats) {
    let k = p.num_samples;
    let mut rows: Vec<Option<RowOutput>> = vec![None; reqs.len() * k];
    let mut order = Vec::new();
    let stats = engine::run(m, reqs, p, ec, |r: RowOutput| -> Result<(), llama::LlamaError> {
        order.push((r.request, r.sample));
        let i = r.request * k + r.sample;
        assert!(rows[i].is_none(), "row {i} came out twice");
        rows[i] = Some(r);
        Ok(())
    })
    .unwrap();
    (rows.into_iter().map(|r| r.expect("every row comes out")).collect(), order, stats)
}

fn max_lp_diff(a: &RowOutput, b: &RowOutput) -> f32 {
    a.logprobs.iter().zip(&b.logprobs).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A token that ends rows at many different lengths when declared the EOS: of the tokens of
/// unconstrained rows, the one whose first occurrences cut the rows at the most distinct lengths.
fn eos_for(rows: &[RowOutput]) -> u32 {
    let cut = |r: &RowOutput, t: u32| r.tokens.iter().position(|&x| x == t).map_or(r.tokens.len(), |i| i + 1);
    let mut candidates: Vec<u32> = rows.iter().flat_map(|r| r.tokens.iter().copied()).collect();
    candidates.sort_unstable();
    candidates.dedup();
    let spread = |t: u32| rows.iter().map(|r| cut(r, t)).collect::<std::collections::BTreeSet<_>>().len();
    candidates.into_iter().max_by_key(|&t| (spread(t), std::cmp::Reverse(t))).unwrap()
}

#[test]
fn greedy_rows_equal_each_row_decoded_alone_under_every_batching() {
    let (_vs, m) = model();
    let ps = prompts();
    let reqs: Vec<Request> = ps.iter().enumerate().map(|(i, x)| Request { prompt: x, seed: i as u64, expected_new_tokens: None }).collect();
    let free = SamplingParams { max_new_tokens: 12, temperature: 0.0, stop_at_eos: false, ..Default::default() };
    let (unstopped, _, _) = run(&m, &reqs, &free, &EngineConfig::static_batches(0));
    let eos = eos_for(&unstopped);
    let p = SamplingParams { stop_at_eos: true, eos_token_id: eos as i64, ..free };
    let alone: Vec<RowOutput> =
        reqs.iter().map(|r| run(&m, std::slice::from_ref(r), &p, &EngineConfig::static_batches(1)).0.remove(0)).collect();
    let lengths: std::collections::HashSet<usize> = alone.iter().map(|r| r.tokens.len()).collect();
    assert!(lengths.len() >= 3, "rows should end at different lengths: {lengths:?}");
    let mut worst = 0f32;
    for ec in [
        EngineConfig::static_batches(0),
        EngineConfig::static_batches(3),
        EngineConfig::continuous(3),
        EngineConfig { schedule: Schedule::LongestPromptFirst, ..EngineConfig::continuous(2) },
        EngineConfig { schedule: Schedule::ShortestPromptFirst, sync_every: 3, ..EngineConfig::continuous(5) },
        EngineConfig { max_tokens_in_flight: 40, ..EngineConfig::continuous(0) },
    ] {
        let (rows, _, _) = run(&m, &reqs, &p, &ec);
        for (i, (a, b)) in rows.iter().zip(&alone).enumerate() {
            assert_eq!(a.tokens, b.tokens, "{ec:?}: row {i}");
            assert_eq!(a.finished, b.finished, "{ec:?}: row {i}");
            assert_eq!(a.tokens.last() == Some(&eos), a.finished);
            let d = max_lp_diff(a, b);
            assert!(d <= 1e-5, "{ec:?}: row {i} log-probs differ by {d}");
            worst = worst.max(d);
        }
    }
    // Whether this CPU's kernels give bit-identical rows is reported, not asserted.
    eprintln!("largest greedy log-prob difference to the row decoded alone: {worst:e}");
}

#[test]
fn sampled_rows_depend_only_on_their_own_stream() {
    let (_vs, m) = peaked_model();
    let ps = prompts();
    let reqs: Vec<Request> =
        ps.iter().enumerate().map(|(i, x)| Request { prompt: x, seed: 1000 + i as u64, expected_new_tokens: None }).collect();
    let free = SamplingParams {
        max_new_tokens: 16,
        temperature: 1.0,
        top_p: 0.95,
        top_k: 40,
        num_samples: 3,
        stop_at_eos: false,
        ..Default::default()
    };
    let (unstopped, _, _) = run(&m, &reqs, &free, &EngineConfig::static_batches(0));
    // K samples of a prompt differ (their own streams) ...
    assert!(unstopped.chunks(3).all(|c| c[0].tokens != c[1].tokens || c[1].tokens != c[2].tokens));
    let p = SamplingParams { stop_at_eos: true, eos_token_id: 2, ..free };
    let (stopped, _, _) = run(&m, &reqs, &p, &EngineConfig::static_batches(0));
    // ... and a row that meets EOS is the unstopped row cut there: the draws before are the same.
    for (a, b) in stopped.iter().zip(&unstopped) {
        let cut = b.tokens.iter().position(|&t| t == 2).map_or(b.tokens.len(), |i| i + 1);
        assert_eq!(a.tokens, b.tokens[..cut].to_vec());
    }
    let lengths: std::collections::BTreeSet<usize> = stopped.iter().map(|r| r.tokens.len()).collect();
    assert!(lengths.len() >= 5, "replies should end at many lengths: {lengths:?}");
    for ec in [
        EngineConfig::continuous(3),
        EngineConfig { schedule: Schedule::LongestExpectedFirst, ..EngineConfig::continuous(7) },
        EngineConfig { schedule: Schedule::ShortestPromptFirst, sync_every: 4, ..EngineConfig::continuous(6) },
        EngineConfig { max_tokens_in_flight: 100, ..EngineConfig::continuous(0) },
        EngineConfig::static_batches(4),
    ] {
        let (rows, _, _) = run(&m, &reqs, &p, &ec);
        for (i, (a, b)) in rows.iter().zip(&stopped).enumerate() {
            assert_eq!(a.tokens, b.tokens, "{ec:?}: row {i}");
            assert!(lp_close(a, b), "{ec:?}: row {i}: {:?} vs {:?}", a.logprobs, b.logprobs);
        }
    }
    // One request alone, with its seed, samples what it sampled among the others.
    let (alone, _, _) = run(&m, &reqs[5..6], &p, &EngineConfig::continuous(1));
    for j in 0..3 {
        assert_eq!(alone[j].tokens, stopped[15 + j].tokens);
    }
    // `generate` gives prompt i the seed `prompt_seed(seed, i)`.
    let g = generate(&m, &ps, &SamplingParams { seed: 5, ..p.clone() }).unwrap();
    let reqs5: Vec<Request> =
        ps.iter().enumerate().map(|(i, x)| Request { prompt: x, seed: prompt_seed(5, i as u64), expected_new_tokens: None }).collect();
    let (rows, _, _) = run(&m, &reqs5, &p, &EngineConfig::continuous(4));
    assert_eq!(g.tokens, rows.iter().map(|r| r.tokens.clone()).collect::<Vec<_>>());
}

#[test]
fn continuous_batching_refills_slots_streams_rows_and_wastes_fewer_steps() {
    let (_vs, m) = peaked_model();
    let ps = prompts();
    let reqs: Vec<Request> = ps.iter().enumerate().map(|(i, x)| Request { prompt: x, seed: i as u64, expected_new_tokens: None }).collect();
    let p = SamplingParams { max_new_tokens: 16, temperature: 1.0, top_p: 1.0, stop_at_eos: true, eos_token_id: 2, ..Default::default() };
    let (rows_s, order_s, st) = run(&m, &reqs, &p, &EngineConfig::static_batches(4));
    let (rows_c, order_c, ct) = run(&m, &reqs, &p, &EngineConfig::continuous(4));
    assert_eq!(rows_s.iter().map(|r| &r.tokens).collect::<Vec<_>>(), rows_c.iter().map(|r| &r.tokens).collect::<Vec<_>>());
    let useful: usize = rows_c.iter().map(|r| r.tokens.len()).sum();
    assert_eq!(st.new_tokens, useful);
    assert_eq!(ct.new_tokens, useful);
    // Static: two batches of 4, each as long as its longest row.
    let longest = |c: &[RowOutput]| c.iter().map(|r| r.tokens.len()).max().unwrap();
    assert_eq!(st.row_steps, 4 * (longest(&rows_s[..4]) + longest(&rows_s[4..])));
    assert!(ct.row_steps < st.row_steps, "continuous {} vs static {} row-steps", ct.row_steps, st.row_steps);
    assert!(ct.useful_fraction() > st.useful_fraction());
    assert!(ct.compactions >= 1);
    // Rows come out as they end: in static batches nothing of the second batch before the first
    // has ended; continuously, a prompt of the second half starts before the first half is done.
    assert!(order_s[..4].iter().all(|&(r, _)| r < 4));
    let first_late = order_c.iter().position(|&(r, _)| r >= 4).unwrap();
    assert!(order_c.len() - first_late >= 4);
}

#[test]
fn k_samples_share_one_prefill_and_bad_inputs_are_refused() {
    let (_vs, m) = model();
    let ps = prompts();
    let reqs: Vec<Request> = ps.iter().map(|x| Request { prompt: x, seed: 3, expected_new_tokens: None }).collect();
    let p = SamplingParams { max_new_tokens: 4, temperature: 1.0, top_p: 1.0, num_samples: 4, stop_at_eos: false, ..Default::default() };
    let (_, _, st) = run(&m, &reqs, &p, &EngineConfig::continuous(8));
    assert_eq!(st.prefill_tokens, ps.iter().map(Vec::len).sum::<usize>(), "each prompt is prefilled once for its 4 samples");
    // Slots below K are raised to K (the samples of a prompt are admitted together).
    let (rows, _, _) = run(&m, &reqs, &p, &EngineConfig::continuous(1));
    assert_eq!(rows.len(), 32);
    let err = |ec: &EngineConfig, p: &SamplingParams| {
        engine::run(&m, &reqs, p, ec, |_| -> Result<(), llama::LlamaError> { Ok(()) }).unwrap_err().to_string()
    };
    assert!(err(&EngineConfig { max_tokens_in_flight: 20, ..EngineConfig::continuous(0) }, &p).contains("max_tokens_in_flight"));
    assert!(err(&EngineConfig::continuous(0), &SamplingParams { max_new_tokens: 5000, ..p.clone() }).contains("max_position_embeddings"));
    assert!(err(&EngineConfig::continuous(0), &SamplingParams { num_samples: 0, ..p.clone() }).contains("num_samples"));
    assert!("fastest".parse::<Schedule>().is_err());
    assert_eq!("longest_expected_first".parse::<Schedule>().unwrap(), Schedule::LongestExpectedFirst);
    // Zero new tokens: every row comes out empty.
    let out = generate_with(&m, &ps, &SamplingParams { max_new_tokens: 0, ..p }, &EngineConfig::continuous(2)).unwrap();
    assert!(out.tokens.len() == 32 && out.tokens.iter().all(Vec::is_empty));
}

/// A small model decodes on one intra-op thread (auto) or on the threads asked for; the caller's
/// callback runs with the caller's setting, and the setting is back when the call returns.
#[test]
fn decode_threads_are_scoped_to_the_call() {
    let (_vs, m) = model();
    let before = tch::get_num_threads();
    let ps = prompts();
    let reqs: Vec<Request> = ps.iter().take(2).map(|x| Request { prompt: x.as_slice(), seed: 1, expected_new_tokens: None }).collect();
    let p = SamplingParams { max_new_tokens: 3, temperature: 1.0, top_p: 1.0, num_samples: 2, ..Default::default() };
    tch::set_num_threads(2);
    for ec in [EngineConfig::continuous(4), EngineConfig { decode_threads: 1, ..EngineConfig::continuous(4) }] {
        let mut seen = Vec::new();
        engine::run(&m, &reqs, &p, &ec, |_r: RowOutput| -> Result<(), llama::LlamaError> {
            seen.push(tch::get_num_threads());
            Ok(())
        })
        .unwrap();
        assert!(!seen.is_empty() && seen.iter().all(|&n| n == 2), "callbacks see the caller's threads: {seen:?}");
        assert_eq!(tch::get_num_threads(), 2, "the caller's setting is restored");
    }
    tch::set_num_threads(before);
}
