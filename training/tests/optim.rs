//! AdamW and clipping against torch.optim.AdamW / clip_grad_norm_ (numbers from PyTorch 2.11,
//! see the Python snippet in each test's comment).
use tch::{nn, Device, Kind, Tensor};
use training::optim::{AdamW, AdamWConfig};

fn close(a: &Tensor, want: &[f32], tol: f64) {
    let got: Vec<f32> = Vec::try_from(a.reshape([-1])).unwrap();
    for (g, w) in got.iter().zip(want) {
        assert!(((g - w) as f64).abs() < tol, "got {got:?}, want {want:?}");
    }
}

/// torch.optim.AdamW([{"params":[w],"weight_decay":0.1},{"params":[n],"weight_decay":0.0}],
/// lr=0.1, betas=(0.9,0.95), eps=1e-5), three steps with fixed gradients.
#[test]
fn adamw_matches_torch_three_steps() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let mut w = (&root / "layer").var("weight", &[2, 2], nn::Init::Const(0.0));
    let mut n = (&root / "layer" / "norm").var("weight", &[2], nn::Init::Const(0.0));
    tch::no_grad(|| {
        w.copy_(&Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1]).view([2, 2]));
        n.copy_(&Tensor::from_slice(&[1.0f32, 0.5]));
    });
    let mut opt = AdamW::new(&vs, AdamWConfig { weight_decay: 0.1, ..Default::default() }, |_| true);
    let grads: [([f32; 4], [f32; 2]); 3] =
        [([0.1, -0.2, 0.3, 0.0], [0.5, -0.5]), ([-0.1, 0.4, 0.2, 1.0], [0.1, 0.2]), ([0.05, 0.05, -0.3, 0.2], [-0.3, 0.0])];
    for (gw, gn) in grads {
        opt.zero_grad();
        // d/dp sum(p * g) = g
        let loss = (&w * Tensor::from_slice(&gw).view([2, 2])).sum(Kind::Float) + (&n * Tensor::from_slice(&gn)).sum(Kind::Float);
        loss.backward();
        opt.step(0.1).unwrap();
    }
    close(&w, &[0.3747392, -0.9436679, 1.7293042, -0.0446289], 1e-6);
    // The norm gain is not decayed.
    close(&n, &[0.7974386, 0.6621865], 1e-6);
}

/// torch.nn.utils.clip_grad_norm_([a, b], 1.0) with grads [[3,0],[0,4]] and [12,0]: norm 13.
#[test]
fn clip_matches_torch() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let a = (&root / "a").var("weight", &[2, 2], nn::Init::Const(0.0));
    let b = (&root / "b").var("weight", &[2], nn::Init::Const(0.0));
    let mut opt = AdamW::new(&vs, AdamWConfig::default(), |_| true);
    let loss = (&a * Tensor::from_slice(&[3.0f32, 0.0, 0.0, 4.0]).view([2, 2])).sum(Kind::Float)
        + (&b * Tensor::from_slice(&[12.0f32, 0.0])).sum(Kind::Float);
    loss.backward();
    let norm = opt.clip_grad_norm(1.0).unwrap();
    assert!((norm - 13.0).abs() < 1e-5);
    close(&a.grad(), &[0.2307692, 0.0, 0.0, 0.3076923], 1e-6);
    close(&b.grad(), &[0.9230769, 0.0], 1e-6);
}

/// bf16 model weights train through fp32 masters: the masters move by less than a bf16 ulp and
/// the bf16 copy follows them.
#[test]
fn bf16_params_keep_fp32_masters() {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::BFloat16);
    let w = (vs.root() / "w").var("weight", &[1, 1], nn::Init::Const(1.0));
    let mut opt = AdamW::new(&vs, AdamWConfig { weight_decay: 0.0, ..Default::default() }, |_| true);
    for _ in 0..10 {
        opt.zero_grad();
        (&w * 1.0).sum(Kind::Float).backward();
        opt.step(1e-4).unwrap(); // each step moves the master by ~1e-4, below bf16's 2^-7 spacing at 1.0
    }
    let master = opt.state_tensors().into_iter().find(|(n, _)| n == "master.w.weight").unwrap().1;
    let m = f64::try_from(master.squeeze()).unwrap();
    assert!((m - (1.0 - 10.0 * 1e-4)).abs() < 1e-5, "master {m}");
    assert_eq!(w.kind(), Kind::BFloat16);
}

/// A two-tensor model (a matrix and a norm gain) in `kind`, the same values every call.
fn two_params(kind: Kind) -> (nn::VarStore, Tensor, Tensor) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let w = (&root / "layer").var("weight", &[3, 4], nn::Init::Const(0.0));
    let n = (&root / "layer" / "norm").var("weight", &[4], nn::Init::Const(0.0));
    tch::no_grad(|| {
        let mut w = w.shallow_clone();
        let mut n = n.shallow_clone();
        w.copy_(&Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]).sin());
        n.copy_(&Tensor::from_slice(&[1.0f32, 0.5, -0.25, 2.0]));
    });
    vs.set_kind(kind);
    let vars = vs.variables();
    (vs, vars["layer.weight"].shallow_clone(), vars["layer.norm.weight"].shallow_clone())
}

/// Six steps of two accumulated micro-batches each, clipped; returns the weights.
fn train(opt: &mut AdamW, w: &Tensor, n: &Tensor) -> Vec<f32> {
    for step in 0..6 {
        opt.zero_grad();
        for mb in 0..2 {
            let t = (step * 2 + mb) as f64;
            let loss = (w.to_kind(Kind::Float) * (t * 0.3).cos()).square().sum(Kind::Float)
                + (n.to_kind(Kind::Float) * (t + 1.0)).sum(Kind::Float);
            loss.backward();
            opt.accumulate();
        }
        opt.clip_grad_norm(1.0).unwrap();
        opt.step(0.05).unwrap();
    }
    let all = Tensor::cat(&[w.to_kind(Kind::Float).reshape([-1]), n.to_kind(Kind::Float).reshape([-1])], 0);
    Vec::<f32>::try_from(&all).unwrap()
}

/// Optimizer offload keeps the fp32 state on another device and copies the updates back: on a
/// CPU-only machine both live in host memory, and the offloaded optimizer (its own masters even
/// for an fp32 model) gives the on-device one's weights and state bit for bit.
#[test]
fn offloaded_adamw_equals_on_device_adamw_bit_for_bit() {
    use training::optim::StateOptions;
    for kind in [Kind::Float, Kind::BFloat16] {
        let (vs_a, wa, na) = two_params(kind);
        let mut plain = AdamW::new(&vs_a, AdamWConfig::default(), |_| true);
        let a = train(&mut plain, &wa, &na);
        let (vs_b, wb, nb) = two_params(kind);
        let opts = StateOptions { offload: Some(Device::Cpu), ..Default::default() };
        let mut offloaded = AdamW::with_options(&vs_b, AdamWConfig::default(), |_| true, opts).unwrap();
        let b = train(&mut offloaded, &wb, &nb);
        assert_eq!(a, b, "{kind:?}: weights differ");
        let state = |o: &AdamW| -> Vec<(String, Vec<f32>)> {
            o.state_tensors()
                .into_iter()
                .filter(|(n, _)| !n.starts_with("master"))
                .map(|(n, t)| (n, Vec::<f32>::try_from(&t.reshape([-1])).unwrap()))
                .collect()
        };
        assert_eq!(state(&plain), state(&offloaded), "{kind:?}: moments differ");
        assert!(offloaded.state_tensors().iter().any(|(n, _)| n == "master.layer.weight"), "the offloaded state has its own master");
    }
}

/// A bf16 model's gradient summed over 64 micro-batches: in bf16 (autograd's own accumulation)
/// it drifts; `accumulate` after each micro-batch sums the (bf16) micro-batch gradients in fp32,
/// exactly here. The gradient norm that clipping reports shows which sum the optimizer uses.
#[test]
fn bf16_gradients_accumulate_in_fp32() {
    let norm_after = |accumulate_each: bool| -> f64 {
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::BFloat16);
        let w = (vs.root() / "w").var("weight", &[1, 8], nn::Init::Const(1.0));
        let mut opt = AdamW::new(&vs, AdamWConfig::default(), |_| true);
        opt.zero_grad();
        for i in 0..64 {
            // d/dw = 1 + i/64 per element: exact in bf16, but their running sum is not.
            (&w * (1.0 + i as f64 / 64.0)).sum(Kind::Float).backward();
            if accumulate_each {
                opt.accumulate();
            }
        }
        opt.clip_grad_norm(0.0).unwrap()
    };
    let exact = (0..64).map(|i| 1.0 + i as f64 / 64.0).sum::<f64>() * 8f64.sqrt();
    let fp32 = norm_after(true);
    let bf16 = norm_after(false);
    assert!((fp32 - exact).abs() <= 1e-6 * exact, "fp32 accumulation: {fp32} vs exact {exact}");
    assert!((bf16 - exact).abs() > 1e-3 * exact, "bf16 accumulation was expected to drift: {bf16} vs {exact}");
}
