//! Where a decode step's time goes on the bench model (developer tool).
use llama::model::{KvCache, Mask};
use llama::{checkpoint, SamplingParams};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn time<F: FnMut()>(name: &str, n: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!("{name:30} {:8.3} ms", t.elapsed().as_secs_f64() * 1000.0 / n as f64);
}

fn main() {
    let dir = std::env::args().nth(1).expect("model dir");
    let (_vs, model) = checkpoint::load_causal_lm(dir.as_ref(), Device::Cpu, Kind::Float).unwrap();
    let _g = tch::no_grad_guard();
    let b = 16;
    let mut cache = KvCache::new(&model.cfg, b, 200, Device::Cpu, Kind::Float);
    let ids = Tensor::randint_low(3, 32000, [b, 32], (Kind::Int64, Device::Cpu));
    let pos = Tensor::arange(32, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, 32], false);
    let _ = model.forward(&ids, &pos, &Mask::Causal, Some(&mut cache));
    let tok = Tensor::randint_low(3, 32000, [b, 1], (Kind::Int64, Device::Cpu));
    let p1 = Tensor::full([b, 1], 40, (Kind::Int64, Device::Cpu));
    let h = model.forward(&tok, &p1, &Mask::None, None);
    time("trunk 1 token (no cache)", 50, || {
        let _ = model.forward(&tok, &p1, &Mask::None, None);
    });
    let hs = h.squeeze_dim(1);
    time("lm head", 50, || {
        let _ = model.lm_logits(&hs);
    });
    let logits = model.lm_logits(&hs);
    let p = SamplingParams { temperature: 1.0, top_p: 1.0, ..Default::default() };
    time("sample T=1", 50, || {
        let _ = llama::generate::sample_next(&logits, &p, &mut llama::rng::SplitMix64::new(0));
    });
    let p0 = SamplingParams { temperature: 0.0, ..Default::default() };
    time("sample greedy", 50, || {
        let _ = llama::generate::sample_next(&logits, &p0, &mut llama::rng::SplitMix64::new(0));
    });
    time("softmax", 50, || {
        let _ = logits.softmax(-1, Kind::Float);
    });
    let probs = logits.softmax(-1, Kind::Float);
    time("multinomial", 50, || {
        let _ = probs.multinomial(1, false);
    });
    time("sample_categorical", 50, || {
        let _ = llama::generate::sample_categorical(&probs, &Tensor::rand([16, 1], (Kind::Float, Device::Cpu)));
    });
    time("log_softmax", 50, || {
        let _ = logits.log_softmax(-1, Kind::Float);
    });
    let x = Tensor::randn([b, 256], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([688, 256], (Kind::Float, Device::Cpu));
    time("matmul 16x256x688 (w.tr)", 200, || {
        let _ = x.matmul(&w.tr());
    });
    let wt = w.tr().contiguous();
    time("matmul 16x256x688 (contig)", 200, || {
        let _ = x.matmul(&wt);
    });
    time("linear 16x256x688", 200, || {
        let _ = x.linear::<Tensor>(&w, None);
    });
}
