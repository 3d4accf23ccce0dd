//! The op-count cuts of issue 17 change no bit: the model as it was before them (separate q/k/v
//! projections, `rotate_half` RoPE, `mean`-based RMSNorm with casts, separate K and V caches),
//! written out here as the reference, gives `equal` hidden states, logits and gradients to
//! today's `Llama::forward`, and to the engine's fused inference path (`FusedWeights`), for a
//! training forward, a padded one, and a prefill followed by continuous-batching decode steps; the
//! engine samples the same tokens and log-probabilities with and without the fused weights.
use llama::lora::LoraConfig;
use llama::model::{KvCache, Mask};
use llama::{generate_with, Config, EngineConfig, Llama, SamplingParams};
use tch::{nn, Device, Kind, Tensor};

static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The shapes that matter: stories260K's (8 heads, 4 KV heads, head dim 8, FFN 172), `micro`
/// (head dim 16) and the demo policy's `tiny` (hidden 128, head dim 32, FFN 344).
fn configs() -> Vec<Config> {
    let stories = Config {
        vocab_size: 512,
        num_attention_heads: 8,
        num_key_value_heads: 4,
        head_dim: 8,
        max_position_embeddings: 512,
        ..Config::micro()
    };
    let tiny = Config { num_hidden_layers: 2, vocab_size: 1000, ..Config::tiny() };
    vec![stories, Config::micro(), tiny]
}

/// A random model whose norm weights are not all 1 (so their multiplication is exercised).
fn model(cfg: &Config, seed: i64) -> (nn::VarStore, Llama) {
    let _g = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Llama::new(&vs.root(), cfg);
    tch::no_grad(|| {
        for l in &m.layers {
            for w in [&l.input_layernorm.weight, &l.post_attention_layernorm.weight] {
                w.shallow_clone().copy_(&(Tensor::randn([cfg.hidden_size], (Kind::Float, Device::Cpu)) * 0.2 + 1.0));
            }
        }
    });
    (vs, m)
}

// ---- The reference: llama/src/model.rs as it was at 7cc84bd. ----

fn old_rope(cfg: &Config) -> (Tensor, Tensor) {
    let (hd, device) = (cfg.head_dim, Device::Cpu);
    let inv_freq = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, device)).to_kind(Kind::Float).divide_scalar(hd as f64);
    let inv_freq = Tensor::from(cfg.rope_theta as f32).to_device(device).pow(&inv_freq).reciprocal();
    let t = Tensor::arange(cfg.max_position_embeddings, (Kind::Int64, device)).to_kind(Kind::Float);
    let freqs = t.unsqueeze(1).matmul(&inv_freq.unsqueeze(0));
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (emb.cos(), emb.sin())
}

fn old_rms(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let x32 = x.to_kind(Kind::Float);
    let var = x32.square().mean_dim(-1, true, Kind::Float);
    let y = (x32 * (var + eps).rsqrt()).to_kind(kind);
    y * w
}

fn old_apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let rot = Tensor::cat(&[&x.narrow(-1, half, half).neg(), &x.narrow(-1, 0, half)], -1);
    x * cos + rot * sin
}

fn lin(x: &Tensor, w: &Tensor) -> Tensor {
    x.matmul(&w.tr())
}

/// The old per-layer caches: keys and values in separate `[B, KV, S, hd]` tensors.
struct OldCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: i64,
}

impl OldCache {
    fn new(cfg: &Config, b: i64, cap: i64) -> Self {
        let shape = [b, cfg.num_key_value_heads, cap, cfg.head_dim];
        let n = cfg.num_hidden_layers as usize;
        let z = || Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        OldCache { k: (0..n).map(|_| z()).collect(), v: (0..n).map(|_| z()).collect(), len: 0 }
    }
}

/// The old `Llama::forward`: `rows` = per-row write positions and span of a decode step.
fn old_forward(
    m: &Llama,
    ids: &Tensor,
    positions: &Tensor,
    mask: Option<&Tensor>,
    cache: Option<&mut OldCache>,
    rows: Option<(&Tensor, i64)>,
) -> Tensor {
    old_forward_with(m, &old_rope(&m.cfg), ids, positions, mask, cache, rows)
}

/// [`old_forward`] with the RoPE tables made once (the old model held them).
fn old_forward_with(
    m: &Llama,
    (cos_t, sin_t): &(Tensor, Tensor),
    ids: &Tensor,
    positions: &Tensor,
    mask: Option<&Tensor>,
    mut cache: Option<&mut OldCache>,
    rows: Option<(&Tensor, i64)>,
) -> Tensor {
    let c = &m.cfg;
    let (h, kv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let (b, t) = ids.size2().unwrap();
    let flat = positions.reshape([-1]);
    let cos = cos_t.index_select(0, &flat).view([b, 1, t, -1]);
    let sin = sin_t.index_select(0, &flat).view([b, 1, t, -1]);
    let mut x = Tensor::embedding(&m.embed_tokens, ids, -1, false, false);
    for (i, l) in m.layers.iter().enumerate() {
        let a = &l.self_attn;
        let xn = old_rms(&x, &l.input_layernorm.weight, c.rms_norm_eps);
        let q = lin(&xn, &a.q_proj.weight).view([b, t, h, hd]).transpose(1, 2);
        let k = lin(&xn, &a.k_proj.weight).view([b, t, kv, hd]).transpose(1, 2);
        let v = lin(&xn, &a.v_proj.weight).view([b, t, kv, hd]).transpose(1, 2);
        let q = old_apply_rope(&q, &cos, &sin);
        let k = old_apply_rope(&k, &cos, &sin);
        let (k, v) = match cache.as_deref_mut() {
            Some(oc) => match rows {
                Some((pos, span)) => {
                    let index = pos.view([b, 1, 1, 1]).expand([b, kv, 1, hd], false);
                    let _ = oc.k[i].scatter_(2, &index, &k);
                    let _ = oc.v[i].scatter_(2, &index, &v);
                    (oc.k[i].narrow(2, 0, span), oc.v[i].narrow(2, 0, span))
                }
                None => {
                    oc.k[i].narrow(2, oc.len, t).copy_(&k);
                    oc.v[i].narrow(2, oc.len, t).copy_(&v);
                    (oc.k[i].narrow(2, 0, oc.len + t), oc.v[i].narrow(2, 0, oc.len + t))
                }
            },
            None => (k, v),
        };
        let causal = mask.is_none() && t > 1;
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, causal, None::<f64>, kv != h);
        let y = lin(&y.transpose(1, 2).reshape([b, t, h * hd]), &a.o_proj.weight);
        let hh = &x + y;
        let hn = old_rms(&hh, &l.post_attention_layernorm.weight, c.rms_norm_eps);
        let mlp = &l.mlp;
        x = &hh + lin(&(lin(&hn, &mlp.gate_proj.weight).silu() * lin(&hn, &mlp.up_proj.weight)), &mlp.down_proj.weight);
    }
    if let (Some(oc), None) = (cache, rows) {
        oc.len += t;
    }
    old_rms(&x, &m.norm.weight, c.rms_norm_eps)
}

fn ids(cfg: &Config, b: i64, t: i64, seed: i64) -> Tensor {
    Tensor::arange(b * t, (Kind::Int64, Device::Cpu)).g_mul_scalar(7919).g_add_scalar(seed).remainder(cfg.vocab_size).view([b, t])
}

fn assert_equal(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    let d = f64::try_from((a - b).abs().max()).unwrap();
    assert!(a.equal(b), "{what}: not bit-identical (max |diff| {d:e})");
}

#[test]
fn training_and_padded_forwards_equal_the_old_formulas() {
    let _g = tch::no_grad_guard();
    for (n, cfg) in configs().iter().enumerate() {
        let (_vs, m) = model(cfg, 10 + n as i64);
        let fused = m.fused_weights().expect("the fused GEMMs are bit-identical on this machine for these shapes");
        for (b, t) in [(1, 1), (3, 11), (4, 37)] {
            let x = ids(cfg, b, t, n as i64);
            let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
            let old = old_forward(&m, &x, &pos, None, None, None);
            let what = format!("config {n}, [{b}, {t}]");
            assert_equal(&format!("{what} causal"), &m.forward(&x, &pos, &Mask::Causal, None), &old);
            assert_equal(&format!("{what} causal fused"), &m.forward_with(&x, &pos, &Mask::Causal, None, Some(&fused)), &old);
            assert_equal(&format!("{what} logits"), &m.lm_logits(&m.forward(&x, &pos, &Mask::Causal, None)), &m.lm_logits(&old));
            // Left padding: the first rows' first positions are pads.
            let valid = Tensor::arange(t, (Kind::Int64, Device::Cpu))
                .unsqueeze(0)
                .ge_tensor(&Tensor::arange(b, (Kind::Int64, Device::Cpu)).unsqueeze(1));
            let Mask::Explicit(mk) = Mask::padded_causal(&valid, 0, t) else { unreachable!() };
            let old = old_forward(&m, &x, &pos, Some(&mk), None, None);
            assert_equal(&format!("{what} padded"), &m.forward(&x, &pos, &Mask::Explicit(mk.shallow_clone()), None), &old);
            assert_equal(&format!("{what} padded fused"), &m.forward_with(&x, &pos, &Mask::Explicit(mk), None, Some(&fused)), &old);
        }
    }
}

#[test]
fn prefill_and_decode_steps_equal_the_old_formulas() {
    let _g = tch::no_grad_guard();
    for (n, cfg) in configs().iter().enumerate() {
        let (_vs, m) = model(cfg, 20 + n as i64);
        let fused = m.fused_weights().expect("fused weights");
        let (b, l, cap, steps) = (5i64, 9i64, 40i64, 12i64);
        let x = ids(cfg, b, l, 3);
        let pos = Tensor::arange(l, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, l], false);
        let mut oc = OldCache::new(cfg, b, cap);
        let mut plain = KvCache::new(cfg, b, cap, Device::Cpu, Kind::Float);
        let mut fc = KvCache::new(cfg, b, cap, Device::Cpu, Kind::Float);
        let old = old_forward(&m, &x, &pos, None, Some(&mut oc), None);
        assert_equal("prefill", &m.forward(&x, &pos, &Mask::Causal, Some(&mut plain)), &old);
        assert_equal("prefill fused", &m.forward_with(&x, &pos, &Mask::Causal, Some(&mut fc), Some(&fused)), &old);
        // Rows at different positions (as in continuous batching): row r continues from l - r,
        // reading keys 0..=its position through an additive mask.
        let mut p: Vec<i64> = (0..b).map(|r| l - r).collect();
        let mut tok = ids(cfg, b, 1, 11);
        for s in 0..steps {
            let span = p.iter().max().unwrap() + 1;
            let pt = Tensor::from_slice(&p);
            let k_pos = Tensor::arange(span, (Kind::Int64, Device::Cpu)).view([1, 1, 1, span]);
            let mask = Tensor::zeros([b, 1, 1, span], (Kind::Float, Device::Cpu))
                .masked_fill(&k_pos.gt_tensor(&pt.view([b, 1, 1, 1])), f64::NEG_INFINITY);
            let pos = pt.view([b, 1]);
            let old = old_forward(&m, &tok, &pos, Some(&mask), Some(&mut oc), Some((&pt, span)));
            plain.set_row_positions(&pt, span);
            let new = m.forward(&tok, &pos, &Mask::Explicit(mask.shallow_clone()), Some(&mut plain));
            fc.set_row_positions(&pt, span);
            let newf = m.forward_with(&tok, &pos, &Mask::Explicit(mask), Some(&mut fc), Some(&fused));
            assert_equal(&format!("config {n} step {s}"), &new, &old);
            assert_equal(&format!("config {n} step {s} fused"), &newf, &old);
            tok = m.lm_logits(&old).argmax(-1, false);
            p.iter_mut().for_each(|x| *x += 1);
        }
    }
}

#[test]
fn training_gradients_equal_the_old_formulas() {
    for (n, cfg) in configs().iter().enumerate() {
        let (vs, m) = model(cfg, 30 + n as i64);
        let (b, t) = (3, 13);
        let x = ids(cfg, b, t, 5);
        let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
        let labels = ids(cfg, b, t, 9).unsqueeze(-1);
        let loss = |h: &Tensor| -m.lm_logits(h).log_softmax(-1, Kind::Float).gather(-1, &labels, false).mean(Kind::Float);
        let grads = |vs: &nn::VarStore| {
            let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, t)| (k, t.grad().copy())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let zero = |vs: &nn::VarStore| {
            for (_, mut t) in vs.variables() {
                t.zero_grad();
            }
        };
        zero(&vs);
        let l_new = loss(&m.forward(&x, &pos, &Mask::Causal, None));
        l_new.backward();
        let g_new = grads(&vs);
        zero(&vs);
        let l_old = loss(&old_forward(&m, &x, &pos, None, None, None));
        l_old.backward();
        let g_old = grads(&vs);
        assert_equal(&format!("config {n} loss"), &l_new, &l_old);
        for ((name, a), (_, b)) in g_new.iter().zip(&g_old) {
            assert_equal(&format!("config {n} gradient of {name}"), a, b);
        }
    }
}

#[test]
fn engine_samples_the_same_bits_with_and_without_fused_weights() {
    let cfg = &configs()[0];
    let (_vs, m) = model(cfg, 40);
    assert!(m.fused_weights().is_some(), "the engine would not use the fused path here");
    let prompts: Vec<Vec<u32>> =
        (0..6u32).map(|i| (0..i + 2).map(|j| if j == 0 { 1 } else { (37 * i + 11 * j) % 500 + 3 }).collect()).collect();
    for (temperature, top_p, k) in [(0.0, 1.0, 1), (1.0, 1.0, 3), (0.7, 0.9, 2)] {
        let p = SamplingParams { max_new_tokens: 24, temperature, top_p, seed: 7, eos_token_id: 2, num_samples: k, ..Default::default() };
        for ec in [EngineConfig::continuous(4), EngineConfig::static_batches(4), EngineConfig::continuous(0)] {
            let on = generate_with(&m, &prompts, &p, &ec).unwrap();
            let off = generate_with(&m, &prompts, &p, &EngineConfig { fused: false, ..ec.clone() }).unwrap();
            assert_eq!(on.tokens, off.tokens, "T {temperature}, {ec:?}");
            let bits = |o: &llama::GenerateOutput| {
                o.logprobs.iter().map(|r| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>()
            };
            assert_eq!(bits(&on), bits(&off), "T {temperature}, {ec:?}: log-probabilities");
            assert!(on.num_new_tokens() > prompts.len() * k, "rows decode more than one token");
        }
    }
}

#[test]
fn no_fused_weights_with_lora_or_off_float32() {
    let cfg = &configs()[0];
    let (vs, mut m) = model(cfg, 50);
    assert!(m.fused_weights().is_some());
    let lc = LoraConfig { r: 2, alpha: 4.0, targets: vec!["q_proj".into()], ..Default::default() };
    m.add_lora(&vs.root(), &lc);
    assert!(m.fused_weights().is_none(), "LoRA adds to a projection's output: the fused copy would drop it");
    let (mut vs, m) = model(cfg, 51);
    vs.bfloat16();
    assert!(m.fused_weights().is_none(), "bf16 GEMMs are not checked");
}
