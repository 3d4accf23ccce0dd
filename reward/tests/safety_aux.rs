//! The safety RM's auxiliary loss (Llama 2 Table 29) in training: the step's logged term equals
//! the mean binary cross-entropy of σ(score) against the labels, computed here by hand from the
//! scores before the step; the total is Eq. 2 + w · that term; and the step is the same however
//! it is split into micro-batches (with and without gradient checkpointing).
use reward::data::PairTokens;
use reward::trainer::{pair_scores, RewardTrainer};
use reward::RewardConfig;
use std::path::Path;
use tch::Device;

/// `RewardModel::load` seeds torch's global generator for a fresh head: one test at a time.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pair(k: u32, chosen_safe: Option<bool>, rejected_safe: Option<bool>) -> PairTokens {
    PairTokens {
        prefix: vec![1, 40 + k, 41, 42],
        chosen: vec![50 + k, 7 + k, 2],
        rejected: vec![60 + k, 61, 2],
        rating: None,
        kind: None,
        source: None,
        chosen_safe,
        rejected_safe,
        truncated: false,
    }
}

fn pairs() -> Vec<PairTokens> {
    vec![
        pair(0, Some(true), Some(false)),
        pair(1, Some(true), Some(true)),
        pair(2, None, None),
        pair(3, Some(false), Some(false)),
        pair(4, None, Some(false)),
        pair(5, Some(true), None),
    ]
}

fn config(micro: usize, accum: usize, weight: f64, checkpointing: bool) -> RewardConfig {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gqa");
    serde_json::from_value(serde_json::json!({
        "model": fixture, "train_data": ["unused.jsonl"], "max_seq_len": 48, "margin": "none",
        "safety_aux_loss_weight": weight,
        "train": {"lr": 1e-3, "micro_batch_size": micro, "grad_accumulation": accum, "epochs": 2,
                  "warmup_ratio": 0.0, "warmup_min_steps": 0,
                  "gradient_checkpointing": checkpointing, "device": "cpu", "threads": 1, "seed": 3},
    }))
    .unwrap()
}

fn ln_sigmoid(x: f64) -> f64 {
    -(1.0 + (-x).exp()).ln()
}

#[test]
fn the_aux_term_is_the_mean_bce_over_labelled_responses() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = pairs();
    let w = 0.7;
    let cfg = config(6, 1, w, false);
    let mut t = RewardTrainer::prepare(&cfg, &data, &[]).unwrap();
    // By hand, from the scores before the step: BCE of σ(r) against each label, mean over the 8
    // labelled responses; Eq. 2 without margin, mean over the 6 pairs.
    let refs: Vec<&PairTokens> = data.iter().collect();
    let (c, r) = {
        let _g = tch::no_grad_guard();
        let (c, r, _) = pair_scores(&t.model, &refs, Device::Cpu);
        (Vec::<f32>::try_from(c).unwrap(), Vec::<f32>::try_from(r).unwrap())
    };
    let (mut bce, mut n, mut rank) = (0.0, 0, 0.0);
    for (i, p) in data.iter().enumerate() {
        let (ci, ri) = (c[i] as f64, r[i] as f64);
        rank -= ln_sigmoid(ci - ri) / data.len() as f64;
        for (s, label) in [(ci, p.chosen_safe), (ri, p.rejected_safe)] {
            if let Some(safe) = label {
                bce -= if safe { ln_sigmoid(s) } else { ln_sigmoid(-s) };
                n += 1;
            }
        }
    }
    assert_eq!(n, 8);
    let aux = bce / n as f64;
    let rec = t.step(0).unwrap();
    let got_aux = rec["safety_aux_loss"].as_f64().unwrap();
    assert!((got_aux - aux).abs() < 1e-5, "aux {got_aux} vs {aux}");
    assert!((rec["ranking_loss"].as_f64().unwrap() - rank).abs() < 1e-5);
    assert!((rec["loss"].as_f64().unwrap() - (rank + w * aux)).abs() < 1e-5);
    assert_eq!(rec["labelled_responses"], 8);
}

#[test]
fn the_step_does_not_depend_on_the_micro_batch_split() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = pairs();
    let run = |micro, accum, ckpt| {
        let cfg = config(micro, accum, 1.0, ckpt);
        let mut t = RewardTrainer::prepare(&cfg, &data, &[]).unwrap();
        let a = t.step(0).unwrap();
        let b = t.step(1).unwrap();
        (a, b)
    };
    let (a1, b1) = run(6, 1, false);
    for (micro, accum, ckpt) in [(2, 3, false), (4, 2, false), (1, 6, true)] {
        let (a, b) = run(micro, accum, ckpt);
        for k in ["loss", "safety_aux_loss", "grad_norm"] {
            let (x, y) = (a1[k].as_f64().unwrap(), a[k].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4 * x.abs().max(1.0), "{micro}x{accum} ckpt={ckpt} step 1 {k}: {x} vs {y}");
        }
        // The second step sees the same updated weights.
        let (x, y) = (b1["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((x - y).abs() < 1e-4, "{micro}x{accum} step 2 loss: {x} vs {y}");
    }
    // Weight 0 is Eq. 2 alone: no aux term, a different gradient.
    let cfg = config(6, 1, 0.0, false);
    let mut t = RewardTrainer::prepare(&cfg, &data, &[]).unwrap();
    let z = t.step(0).unwrap();
    assert!(z.get("safety_aux_loss").is_none());
    assert!((z["loss"].as_f64().unwrap() - a1["ranking_loss"].as_f64().unwrap()).abs() < 1e-5);
    assert!((z["grad_norm"].as_f64().unwrap() - a1["grad_norm"].as_f64().unwrap()).abs() > 1e-6);
}
