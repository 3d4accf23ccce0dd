//! The training forward against the sampler: log-probabilities of sampled tokens recomputed on
//! `[pad.. prompt][response ..pad]` rows equal the sampler's (KV cache, left-padded prefill) up
//! to float rounding, and per-token values read the same states.
use llama::{generate, Config, Llama, SamplingParams};
use ppo::models::{response_logprobs, response_values, SeqBatch};
use reward::RewardModel;
use tch::{nn, Device, Kind, Tensor};

fn micro() -> (nn::VarStore, Llama) {
    tch::manual_seed(11);
    let vs = llama::checkpoint::var_store(Device::Cpu, Kind::Float);
    let mut cfg = Config::micro();
    cfg.vocab_size = 64;
    let m = Llama::new(&vs.root(), &cfg);
    (vs, m)
}

#[test]
fn recomputed_logprobs_match_the_sampler() {
    let (_vs, model) = micro();
    let prompts: Vec<Vec<u32>> = vec![vec![1, 5, 9, 12], vec![1, 7], vec![1, 3, 3, 3, 3, 8, 2 + 40]];
    for temperature in [1.0, 0.7] {
        let p = SamplingParams {
            max_new_tokens: 12,
            temperature,
            top_p: 1.0,
            top_k: 0,
            seed: 3,
            stop_at_eos: true,
            eos_token_id: 2,
            num_samples: 2,
        };
        let out = generate(&model, &prompts, &p).unwrap();
        let ps: Vec<&[u32]> = (0..out.tokens.len()).map(|r| prompts[r / 2].as_slice()).collect();
        let rs: Vec<&[u32]> = out.tokens.iter().map(|t| t.as_slice()).collect();
        let b = SeqBatch::new(&ps, &rs, Device::Cpu);
        let lp = tch::no_grad(|| response_logprobs(&model, &b, temperature));
        let t = b.response_len() as usize;
        let mut max_diff = 0f32;
        for (r, want) in out.logprobs.iter().enumerate() {
            let got: Vec<f32> = Vec::try_from(lp.get(r as i64)).unwrap();
            assert_eq!(got.len(), t);
            for (a, b) in got.iter().zip(want) {
                max_diff = max_diff.max((a - b).abs());
            }
        }
        assert!(max_diff < 1e-4, "T = {temperature}: max |Δ log p| = {max_diff}");
        // Rows come out differently long: the mask covers exactly each response.
        let lens: Vec<f32> = Vec::try_from(b.response_mask.sum_dim_intlist(1, false, Kind::Float)).unwrap();
        assert_eq!(lens, out.tokens.iter().map(|t| t.len() as f32).collect::<Vec<_>>());
    }
}

#[test]
fn values_read_the_state_before_each_token() {
    tch::manual_seed(5);
    let vs = llama::checkpoint::var_store(Device::Cpu, Kind::Float);
    let mut cfg = Config::micro();
    cfg.vocab_size = 64;
    let v = RewardModel::new(&vs.root(), &cfg);
    let prompt: Vec<u32> = vec![1, 4, 6];
    let response: Vec<u32> = vec![8, 9, 2];
    let b = SeqBatch::new(&[&prompt, &[1, 4]], &[&response, &[5]], Device::Cpu);
    let vals = tch::no_grad(|| response_values(&v, &b));
    // V(s_t) for row 0 is the score of prompt + response[..t], read at its last token.
    for t in 0..3usize {
        let seq: Vec<i64> = prompt.iter().chain(&response[..t]).map(|&x| x as i64).collect();
        let n = seq.len() as i64;
        let ids = Tensor::from_slice(&seq).view([1, n]);
        let pos = Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]);
        let want = tch::no_grad(|| v.scores_at(&ids, &pos, &llama::model::Mask::Causal, &Tensor::from_slice(&[n - 1]).view([1, 1])));
        let got = f64::try_from(vals.get(0).get(t as i64)).unwrap();
        assert!((got - f64::try_from(want.view([-1]).get(0)).unwrap()).abs() < 1e-4, "t = {t}");
    }
}
