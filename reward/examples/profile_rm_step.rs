//! Where a reward-model step's time goes on the bench model (developer tool):
//! `cargo run --release -p reward --example profile_rm_step -- runs/bench-20m [causal]` (`causal`: time
//! the trunk under a plain causal mask instead of the shared-prefix one, to see what the mask costs).
use reward::data::{collate, PairTokens};
use reward::model::RewardModel;
use std::time::Instant;
use tch::{Device, Kind};
use training::optim::{AdamW, AdamWConfig};

fn main() {
    let dir = std::env::args().nth(1).expect("model dir");
    tch::set_num_threads(2);
    let (vs, model, _) = RewardModel::load(dir.as_ref(), Device::Cpu, Kind::Float, 0).unwrap();
    let mut opt = AdamW::new(&vs, AdamWConfig::default(), |_| true);
    let mut rng = llama::rng::SplitMix64::new(0);
    let mut ids = |k: usize| -> Vec<u32> { (0..k).map(|_| 3 + (rng.next_u64() % 31997) as u32).collect() };
    let pairs: Vec<PairTokens> = (0..8)
        .map(|_| PairTokens {
            prefix: ids(192),
            chosen: ids(64),
            rejected: ids(64),
            rating: None,
            kind: None,
            source: None,
            chosen_safe: None,
            rejected_safe: None,
            truncated: false,
        })
        .collect();
    let refs: Vec<&PairTokens> = pairs.iter().collect();
    let causal = std::env::args().nth(2).is_some();
    for _ in 0..5 {
        let t0 = Instant::now();
        opt.zero_grad();
        let b = collate(&refs, Device::Cpu);
        let t1 = t0.elapsed().as_secs_f64();
        let s = if causal {
            model.scores_at(&b.ids, &b.positions, &llama::model::Mask::Causal, &b.read)
        } else {
            model.scores_at(&b.ids, &b.positions, &b.mask, &b.read)
        };
        let loss = -(s.select(1, 0) - s.select(1, 1)).log_sigmoid().mean(Kind::Float);
        let t2 = t0.elapsed().as_secs_f64();
        loss.backward();
        let t3 = t0.elapsed().as_secs_f64();
        opt.clip_grad_norm(1.0).unwrap();
        let t4 = t0.elapsed().as_secs_f64();
        opt.step(1e-5).unwrap();
        let t5 = t0.elapsed().as_secs_f64();
        println!("collate {:.3}s fwd {:.3}s bwd {:.3}s clip {:.3}s adamw {:.3}s total {:.3}s", t1, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5);
    }
}
