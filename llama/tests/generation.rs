//! Sampler and generation behaviour: the categorical draw follows the distribution, top-k/top-p
//! truncate it, seeds reproduce, K samples share one prefill, EOS stops each row.
use llama::generate::{sample_categorical, sample_next};
use llama::model::Mask;
use llama::rng::SplitMix64;
use llama::{checkpoint, generate, SamplingParams};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn model() -> (tch::nn::VarStore, llama::Llama) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gqa");
    checkpoint::load_causal_lm(&dir, Device::Cpu, Kind::Float).unwrap()
}

#[test]
fn categorical_draws_follow_the_distribution() {
    let p = [0.1f32, 0.0, 0.6, 0.3];
    let n = 20000;
    let probs = Tensor::from_slice(&p).unsqueeze(0).expand([n, 4], false).contiguous();
    let u = Tensor::from_slice(&SplitMix64::new(3).uniforms(n as usize)).unsqueeze(1);
    let draws: Vec<i64> = Vec::try_from(sample_categorical(&probs, &u).reshape([-1])).unwrap();
    let mut counts = [0usize; 4];
    for d in draws {
        counts[d as usize] += 1;
    }
    assert_eq!(counts[1], 0, "a zero-probability token was drawn");
    for i in [0, 2, 3] {
        let f = counts[i] as f64 / n as f64;
        // 5 standard deviations of a binomial proportion.
        let sd = (p[i] as f64 * (1.0 - p[i] as f64) / n as f64).sqrt();
        assert!((f - p[i] as f64).abs() < 5.0 * sd, "token {i}: frequency {f} vs {}", p[i]);
    }
}

#[test]
fn top_k_and_top_p_truncate() {
    let mut rng = SplitMix64::new(0);
    // Row probabilities after softmax: 0.5, 0.25, 0.125, 0.125 (log-space logits).
    let logits = Tensor::from_slice(&[0.5f32, 0.25, 0.125, 0.125]).log().unsqueeze(0).expand([4000, 4], false).contiguous();
    let mut draws = |p: &SamplingParams| -> Vec<i64> { Vec::try_from(sample_next(&logits, p, &mut rng).0).unwrap() };
    let base = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, ..Default::default() };
    assert!(draws(&SamplingParams { top_k: 1, ..base.clone() }).iter().all(|&t| t == 0));
    let k2 = draws(&SamplingParams { top_k: 2, ..base.clone() });
    assert!(k2.iter().all(|&t| t < 2) && k2.contains(&1));
    // top_p 0.6: the mass before token 1 is 0.5 < 0.6, so tokens 0 and 1 stay; token 2 (mass before 0.75) goes.
    let p6 = draws(&SamplingParams { top_p: 0.6, ..base.clone() });
    assert!(p6.iter().all(|&t| t < 2) && p6.contains(&1));
    let p4 = draws(&SamplingParams { top_p: 0.4, ..base.clone() });
    assert!(p4.iter().all(|&t| t == 0));
    // The reported log-probability is that of the untruncated distribution at temperature T.
    let (tok, lp) = sample_next(&logits.narrow(0, 0, 1), &SamplingParams { top_k: 1, ..base }, &mut SplitMix64::new(1));
    assert_eq!(i64::try_from(tok.squeeze()).unwrap(), 0);
    assert!((f64::try_from(lp.squeeze()).unwrap() - 0.5f64.ln()).abs() < 1e-6);
}

#[test]
fn seeded_sampling_reproduces_and_seeds_differ() {
    let (_vs, m) = model();
    let prompts = vec![vec![1u32, 450, 4996], vec![1u32, 15043]];
    let p = SamplingParams { max_new_tokens: 12, temperature: 1.5, top_p: 1.0, stop_at_eos: false, seed: 11, ..Default::default() };
    let a = generate(&m, &prompts, &p).unwrap();
    let b = generate(&m, &prompts, &p).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.logprobs, b.logprobs);
    let c = generate(&m, &prompts, &SamplingParams { seed: 12, ..p }).unwrap();
    assert_ne!(a.tokens, c.tokens);
}

#[test]
fn k_samples_share_the_prefill_and_match_single_prompt_runs() {
    let (_vs, m) = model();
    let prompts = vec![vec![1u32, 450, 4996, 17354], vec![1u32, 15043]];
    let greedy = SamplingParams { max_new_tokens: 8, temperature: 0.0, stop_at_eos: false, num_samples: 3, ..Default::default() };
    let out = generate(&m, &prompts, &greedy).unwrap();
    assert_eq!(out.tokens.len(), 6);
    for (i, prompt) in prompts.iter().enumerate() {
        let single = generate(&m, std::slice::from_ref(prompt), &SamplingParams { num_samples: 1, ..greedy.clone() }).unwrap();
        for j in 0..3 {
            assert_eq!(out.tokens[i * 3 + j], single.tokens[0], "prompt {i} sample {j}");
            for (a, b) in out.logprobs[i * 3 + j].iter().zip(&single.logprobs[0]) {
                assert!((a - b).abs() < 1e-4);
            }
        }
    }
    // Sampled (T = 1) K rows of the same prompt differ from each other.
    let sampled = generate(
        &m,
        &prompts[..1],
        &SamplingParams { temperature: 1.0, top_p: 1.0, num_samples: 4, max_new_tokens: 8, stop_at_eos: false, ..Default::default() },
    )
    .unwrap();
    assert!(sampled.tokens.iter().skip(1).any(|t| t != &sampled.tokens[0]));
}

#[test]
fn eos_stops_each_row() {
    let (_vs, m) = model();
    let prompts = vec![vec![1u32, 450, 4996], vec![1u32, 15043, 3186]];
    let free = SamplingParams { max_new_tokens: 10, temperature: 0.0, stop_at_eos: false, ..Default::default() };
    let full = generate(&m, &prompts, &free).unwrap();
    // Declare row 0's 4th greedy token the EOS: row 0 stops there (EOS kept), row 1 runs on
    // unless the same token appears in it.
    let eos = full.tokens[0][3];
    let out = generate(&m, &prompts, &SamplingParams { stop_at_eos: true, eos_token_id: eos as i64, ..free }).unwrap();
    let first = full.tokens[0].iter().position(|&t| t == eos).unwrap();
    assert_eq!(out.tokens[0], full.tokens[0][..=first].to_vec());
    assert!(out.finished[0]);
    match full.tokens[1].iter().position(|&t| t == eos) {
        Some(k) => assert_eq!(out.tokens[1], full.tokens[1][..=k].to_vec()),
        None => {
            assert_eq!(out.tokens[1], full.tokens[1]);
            assert!(!out.finished[1]);
        }
    }
}

#[test]
fn rejects_prompts_past_the_context() {
    let (_vs, m) = model();
    let p = SamplingParams { max_new_tokens: 4096, ..Default::default() };
    let e = generate(&m, &[vec![1u32, 2, 3]], &p).unwrap_err();
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");
}

/// `forward_at` (last layer only at the read positions) equals gathering from the full forward,
/// under each kind of mask, and its gradient flows to the same parameters.
#[test]
fn forward_at_equals_the_gathered_full_forward() {
    let (_vs, m) = model();
    let (b, t) = (3i64, 9i64);
    let ids = Tensor::randint_low(3, m.cfg.vocab_size, [b, t], (Kind::Int64, Device::Cpu));
    let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
    let read = Tensor::from_slice(&[8i64, 3, 0, 5, 6, 8]).view([b, 2]);
    let seg = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 1, 2, 2, 2]).unsqueeze(0).expand([b, t], false).contiguous();
    for mask in [Mask::Causal, Mask::None, Mask::shared_prefix(&seg), Mask::packed(&seg)] {
        let full = tch::no_grad(|| m.forward(&ids, &pos, &mask, None));
        let d = full.size()[2];
        let want = full.gather(1, &read.unsqueeze(-1).expand([b, 2, d], false), false);
        let got = tch::no_grad(|| m.forward_at(&ids, &pos, &mask, &read));
        let diff = f64::try_from((&got - &want).abs().max()).unwrap();
        assert!(diff < 1e-5, "{mask:?}: max diff {diff}");
    }
}
