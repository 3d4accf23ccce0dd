//! Times the pieces of one PPO policy micro-batch (16 rows) on a checkpoint (CPU): forward with the
//! LM head at response tokens, entropy, backward, AdamW. `cargo run --release -p ppo --example profile_ppo -- DIR`
use ppo::math::*;
use ppo::models::*;
use std::time::Instant;
use tch::{Device, Kind};

fn main() {
    let dir = std::env::args().nth(1).expect("checkpoint dir");
    let p = Policy::load(std::path::Path::new(&dir), Device::Cpu, Kind::Float).unwrap();
    let mut opt = training::AdamW::new(&p.vs, Default::default(), |_| true);
    let prompts: Vec<Vec<u32>> = (0..16).map(|i| (0..(15 + i % 7)).map(|j| 1 + ((i * 31 + j * 7) % 3000) as u32).collect()).collect();
    let resp: Vec<Vec<u32>> = (0..16).map(|i| (0..(10 + i % 11)).map(|j| 100 + ((i * 17 + j * 5) % 3000) as u32).collect()).collect();
    let pr: Vec<&[u32]> = prompts.iter().map(|v| v.as_slice()).collect();
    let rr: Vec<&[u32]> = resp.iter().map(|v| v.as_slice()).collect();
    for _ in 0..3 {
        let b = SeqBatch::new(&pr, &rr, Device::Cpu);
        let t = Instant::now();
        let (lp, logits) = response_logprobs_and_logits(&p.model, &b, 1.0);
        let t_fwd = t.elapsed().as_secs_f64();
        let ent = tch::no_grad(|| entropy_from_logits(&logits).mean(Kind::Float));
        let t_ent = t.elapsed().as_secs_f64();
        let loss = clipped_policy_loss(&lp, &lp.detach(), &b.response_mask, &b.response_mask, 0.2).loss;
        opt.zero_grad();
        loss.backward();
        let t_bwd = t.elapsed().as_secs_f64();
        opt.clip_grad_norm(1.0).unwrap();
        opt.step(1e-5).unwrap();
        let t_opt = t.elapsed().as_secs_f64();
        let _ = f64::try_from(ent).unwrap();
        println!(
            "forward+head+logprobs {t_fwd:.3} entropy {t_ent:.3} backward {t_bwd:.3} optimizer {t_opt:.3} (cumulative s), tokens {}",
            b.num_tokens
        );
    }
}
