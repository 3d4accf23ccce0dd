//! Activation checkpointing: the gradients of a layer-wise recomputed backward equal the plain
//! backward's (float64 on CPU), for a loss on every position (SFT) and for a head that reads a
//! few positions through the last layer (reward models).
use llama::model::Mask;
use llama::{checkpoint, Config, Llama};
use tch::{nn, Device, Kind, Tensor};

fn model() -> (nn::VarStore, Llama) {
    tch::manual_seed(11);
    let vs = checkpoint::var_store(Device::Cpu, Kind::Double);
    let m = Llama::new(&vs.root(), &Config::micro());
    (vs, m)
}

fn grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut g: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| {
            let g = t.grad();
            (n, if g.defined() { g.copy() } else { g })
        })
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    g
}

fn zero(vs: &nn::VarStore) {
    for (_, mut t) in vs.variables() {
        t.zero_grad();
    }
}

fn assert_same(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((n, x), (_, y)) in a.iter().zip(b) {
        assert!(x.defined() && y.defined(), "{n}: no gradient");
        let d = f64::try_from((x - y).abs().max()).unwrap();
        let s = f64::try_from(x.abs().max()).unwrap();
        assert!(s > 0.0, "{n}: zero gradient");
        assert!(d <= 1e-12 * s.max(1.0), "{n}: checkpointed gradient differs by {d:e} (scale {s:e})");
    }
}

fn batch() -> (Tensor, Tensor, Mask) {
    let ids = Tensor::randint(200, [2, 12], (Kind::Int64, Device::Cpu));
    // Two packed rows: segments 1,1,...,2,2 with padding 0 at the end of the second.
    let seg: Vec<i64> = [vec![1; 7], vec![2; 5], vec![1; 4], vec![2; 6], vec![0; 2]].concat();
    let segments = Tensor::from_slice(&seg).view([2, 12]);
    let positions = Tensor::arange(12, (Kind::Int64, Device::Cpu)).unsqueeze(0).repeat([2, 1]);
    (ids, positions, Mask::packed(&segments))
}

#[test]
fn checkpointed_gradients_equal_the_plain_backward() {
    let (vs, m) = model();
    let (ids, positions, mask) = batch();
    let targets = Tensor::randint(200, [2, 12], (Kind::Int64, Device::Cpu));
    let nll = |h: &Tensor| m.lm_logits(h).log_softmax(-1, Kind::Double).gather(2, &targets.unsqueeze(-1), false).neg().sum(Kind::Double);
    let plain_loss = nll(&m.forward(&ids, &positions, &mask, None));
    plain_loss.backward();
    let plain = grads(&vs);
    zero(&vs);
    let ck_loss = m.backward_checkpointed(&ids, &positions, &mask, None, nll);
    assert_eq!(f64::try_from(&ck_loss).unwrap(), f64::try_from(&plain_loss).unwrap());
    assert_same(&plain, &grads(&vs));
}

#[test]
fn checkpointed_gradients_through_read_positions_equal_the_plain_backward() {
    let (vs, m) = model();
    let (ids, positions, mask) = batch();
    let read = Tensor::from_slice(&[6i64, 11, 3, 9]).view([2, 2]);
    let w = Tensor::randn([Config::micro().hidden_size], (Kind::Double, Device::Cpu));
    let head = |h: &Tensor| h.matmul(&w).tanh().sum(Kind::Double);
    head(&m.forward_at(&ids, &positions, &mask, &read)).backward();
    let plain = grads(&vs);
    zero(&vs);
    let _ = m.backward_checkpointed(&ids, &positions, &mask, Some(&read), head);
    let ck = grads(&vs);
    // lm_head takes no part in a read-position head.
    let keep = |g: Vec<(String, Tensor)>| g.into_iter().filter(|(n, _)| !n.starts_with("lm_head")).collect::<Vec<_>>();
    assert_same(&keep(plain), &keep(ck));
}
