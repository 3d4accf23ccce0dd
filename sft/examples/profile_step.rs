//! Where an SFT step's time goes on the bench model (developer tool).
use llama::checkpoint;
use llama::model::Mask;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use training::optim::{AdamW, AdamWConfig};

fn main() {
    let dir = std::env::args().nth(1).expect("model dir");
    let (vs, model) = checkpoint::load_causal_lm(dir.as_ref(), Device::Cpu, Kind::Float).unwrap();
    let mut opt = AdamW::new(&vs, AdamWConfig::default(), |_| true);
    let (b, t) = (8i64, 256i64);
    let ids = Tensor::randint_low(3, 32000, [b, t], (Kind::Int64, Device::Cpu));
    let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
    let seg = Tensor::zeros([b, t], (Kind::Int64, Device::Cpu));
    for (name, mask) in [("causal", Mask::Causal), ("packed", Mask::packed(&seg))] {
        for _ in 0..3 {
            let t0 = Instant::now();
            opt.zero_grad();
            let h = model.forward(&ids, &pos, &mask, None);
            let t1 = t0.elapsed().as_secs_f64();
            let hs = h.narrow(1, 192, 64).reshape([-1, 256]);
            let logits = model.lm_logits(&hs);
            let loss = logits.log_softmax(-1, Kind::Float).mean(Kind::Float);
            let t2 = t0.elapsed().as_secs_f64();
            loss.backward();
            let t3 = t0.elapsed().as_secs_f64();
            opt.clip_grad_norm(1.0).unwrap();
            let t4 = t0.elapsed().as_secs_f64();
            opt.step(1e-5).unwrap();
            let t5 = t0.elapsed().as_secs_f64();
            println!("{name}: fwd {:.3}s head+loss {:.3}s bwd {:.3}s clip {:.3}s adamw {:.3}s", t1, t2 - t1, t3 - t2, t4 - t3, t5 - t4);
        }
    }
}
