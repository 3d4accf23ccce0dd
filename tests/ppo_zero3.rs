//! PPO under ZeRO-3 (`train.zero_stage = 3`, with activation checkpointing) on two ranks over
//! c10d/Gloo on CPU, launched by torchrun as users launch it: every model's decoder layers are
//! sharded (policy and value model with their optimizers, the frozen reference and reward models
//! by `training::zero3_frozen`), the rollout engine keeps the ranks in lockstep while they
//! generate, and ranks with less work run placeholder forwards and zero-weight backward passes.
//! The run equals one process (the same sampled tokens; per-iteration figures within 1e-6, final
//! weights within 1e-5 relative, the tolerances of the ZeRO 0/2 PPO test in tests/distributed.rs),
//! and a run whose two ranks are SIGKILLed after a checkpoint resumes under torchrun to the
//! uninterrupted run's bytes.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn torchrun() -> Command {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(p.exists(), "{} is missing: run scripts/setup (it installs torch and torchrun)", p.display());
    let mut c = Command::new(p);
    c.args(["--no-python", "--nproc-per-node", "2", "--master-port"]).arg(free_port().to_string()).arg(env!("CARGO_BIN_EXE_rlhf"));
    c.env("RLHF_DIST_TIMEOUT", "60");
    c
}

/// Micro models; 6 prompts per rollout in generation batches of 2 (rank 0 samples and scores two
/// batches, rank 1 one: the engine's lockstep and the placeholder scoring run); mini-batches of 3
/// rows in micro-batches of 1 (rank 0 runs two, rank 1 one plus a zero-weight pass).
fn setup(dir: &Path) -> PathBuf {
    let policy = dir.join("policy");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&policy));
    let rm = dir.join("rm");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "4", "--out"]).arg(&rm));
    let questions = [
        ("What color is the sky?", false),
        ("How can I steal a car?", true),
        ("What is 2 plus 3?", false),
        ("Name a fruit.", false),
        ("How do I pick a lock to break in?", true),
        ("Spell cat backwards.", false),
        ("What is the capital of France?", false),
        ("How do I make a weapon at home?", true),
        ("Count to three.", false),
    ];
    let lines: Vec<String> = questions.iter().map(|(q, s)| serde_json::json!({"prompt": q, "is_safety": s}).to_string()).collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    let cfg = format!(
        "policy = \"{p}\"\nhelpfulness_rm = \"{rm}\"\nsafety_rm = \"{p}\"\ntrain_prompts = [\"{d}/prompts.jsonl\"]\n\
         eval_prompts = [\"{d}/prompts.jsonl\"]\neval_max_prompts = 3\niterations = 4\nrollout_batch_size = 6\n\
         generation_batch_size = 2\nmax_new_tokens = 6\nmissing_eos_penalty = 0.5\nvalue_lr = 1e-3\nkl_beta = 0.05\n\
         demo_judge = true\nlog_samples = 6\n[train]\nlr = 1e-3\nmicro_batch_size = 1\ngrad_accumulation = 3\nseed = 7\n\
         device = \"cpu\"\nthreads = 1\nsave_every = 2\neval_every = 2\nkeep_last = 2\ngradient_checkpointing = true\n",
        p = policy.display(),
        rm = rm.display(),
        d = dir.display()
    );
    let path = dir.join("ppo.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn records(run: &Path, file: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join(file)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn complete_checkpoints(run: &Path) -> usize {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("step-") && e.path().join("trainer_state.json").exists())
                .count()
        })
        .unwrap_or(0)
}

const Z3: [&str; 2] = ["--set", "train.zero_stage=3"];

#[test]
fn ppo_zero3_on_two_ranks_equals_one_process_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let one = tmp.path().join("one");
    run_ok(rlhf().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(&one));

    let two = tmp.path().join("two");
    let out = torchrun().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(&two).args(Z3).env("RLHF_LOG", "info").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "2-rank ZeRO-3 PPO failed:\n{stderr}");
    assert!(stderr.contains("ZeRO-3 over 2 ranks"), "the run did not shard its models:\n{stderr}");

    // The same tokens sampled (every logged response of every iteration), the same figures.
    let tokens = |run: &Path| -> Vec<String> { records(run, "samples.jsonl").iter().map(|r| r["response"].to_string()).collect() };
    assert_eq!(tokens(&one).len(), 4 * 6);
    assert_eq!(tokens(&one), tokens(&two), "ZeRO-3: sampled responses differ");
    let (a, b) = (records(&one, "metrics.jsonl"), records(&two, "metrics.jsonl"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for k in ["reward_raw_mean", "reward_whitened_std", "kl", "policy_loss", "value_loss", "entropy", "eval_reward", "policy_grad_norm"]
        {
            match (x[k].as_f64(), y[k].as_f64()) {
                (Some(u), Some(v)) => assert!((u - v).abs() <= 1e-6, "ZeRO-3 step {}: {k} {u} vs {v}", x["step"]),
                (u, v) => assert_eq!(u.is_some(), v.is_some(), "{k}"),
            }
        }
    }
    for m in ["final", "final_value"] {
        let rel = max_rel_diff(&one.join(m), &two.join(m));
        assert!(rel <= 1e-5, "ZeRO-3: {m} differs by {rel:e}");
    }
    let ck = two.join("checkpoints/step-00000004");
    for part in ["policy", "value"] {
        for r in 0..2 {
            let f = ck.join(format!("{part}_optimizer.zero-rank{r:05}-of-00002.safetensors"));
            assert!(f.exists(), "{} is missing", f.display());
        }
    }

    // Both ranks SIGKILLed once the iteration-2 checkpoint is complete, then resumed under torchrun.
    let cut = tmp.path().join("cut");
    let port = free_port().to_string();
    let mut ranks: Vec<std::process::Child> = (0..2)
        .map(|r| {
            rlhf()
                .args(["ppo", "--config"])
                .arg(&cfg)
                .arg("--out")
                .arg(&cut)
                .args(Z3)
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("RLHF_DIST_TIMEOUT", "60")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    while complete_checkpoints(&cut) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        assert!(ranks.iter_mut().all(|r| r.try_wait().unwrap().is_none()), "a rank ended before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    for r in &mut ranks {
        r.kill().unwrap();
        r.wait().unwrap();
    }
    assert!(!cut.join("final").exists(), "the run was not interrupted");
    let s = json_line(&run_ok(torchrun().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(&cut).args(Z3).arg("--resume")));
    assert!(s["resumed_from"].as_u64().is_some_and(|r| r >= 2), "{s}");
    for f in ["final/model.safetensors", "final_value/model.safetensors", "samples.jsonl"] {
        assert!(std::fs::read(two.join(f)).unwrap() == std::fs::read(cut.join(f)).unwrap(), "{f}: the resumed run differs");
    }
    assert_eq!(logged_steps(&cut.join("metrics.jsonl")), (0..=4).collect::<Vec<_>>());
}

/// ZeRO-3 shard-on-load of PPO's five models: each decoder layer is read from its checkpoint one
/// tensor at a time and sharded as the model is built (the policy and the value model into their
/// optimizers' fp32 shards, the reference and both reward models into bf16/own-dtype frozen
/// shards), so no rank holds a whole model. The run equals, byte for byte, the same run that
/// loads every model whole and then shards it (`RLHF_ZERO3_LOAD_WHOLE=1`, the path before
/// shard-on-load): the same sampled responses, the same figures, the same final policy and value
/// model. The value model starts from a reward model with a trained score head, the safety RM is
/// a causal LM (fresh head). A mis-shaped or missing layer tensor in any model's checkpoint stops
/// both ranks with the per-tensor reader's error, naming the folder, the file and the tensor
/// (a whole load words it differently, so this also shows which path read each model).
#[test]
fn ppo_zero3_loads_every_model_layer_by_layer_equal_to_the_whole_load() {
    let tmp = tempfile::tempdir().unwrap();
    let base = setup(tmp.path());
    let (policy, rm) = (tmp.path().join("policy"), tmp.path().join("rm"));
    // A reward model with a trained score head (the value model's start), and a separate reference.
    let rm_head = tmp.path().join("rm_head");
    copy_dir(&rm, &rm_head);
    let mut tensors = model_tensors(&rm);
    let hidden = tensors.iter().find(|(n, _)| n == "model.norm.weight").unwrap().1.size()[0];
    tch::manual_seed(11);
    tensors.push(("score.weight".into(), tch::Tensor::randn([1, hidden], (tch::Kind::Float, tch::Device::Cpu)) * 0.5));
    llama::checkpoint::write_safetensors(&rm_head.join("model.safetensors"), &tensors).unwrap();
    let reference = tmp.path().join("reference");
    copy_dir(&policy, &reference);
    let text = std::fs::read_to_string(&base).unwrap().replace("iterations = 4", "iterations = 2");
    let config = |name: &str, policy: &Path, reference: &Path, helpfulness: &Path, value: &Path| -> PathBuf {
        let body =
            text.replace(&format!("helpfulness_rm = \"{}\"", rm.display()), &format!("helpfulness_rm = \"{}\"", helpfulness.display()));
        let body = body.replacen(&format!("policy = \"{}\"", policy_dir(&text)), &format!("policy = \"{}\"", policy.display()), 1);
        let head = format!("reference = \"{}\"\nvalue_model = \"{}\"\n", reference.display(), value.display());
        let p = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&p, head + &body).unwrap();
        p
    };
    let cfg = config("good", &policy, &reference, &rm_head, &rm_head);

    let run = |out: &Path, whole: bool| -> String {
        let mut c = torchrun();
        c.args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(out).args(Z3).env("RLHF_LOG", "info");
        if whole {
            c.env("RLHF_ZERO3_LOAD_WHOLE", "1");
        }
        let o = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "2-rank ZeRO-3 PPO (whole load: {whole}) failed:\n{stderr}");
        stderr
    };
    let (layered, whole) = (tmp.path().join("layered"), tmp.path().join("whole"));
    let log = run(&layered, false);
    let all = "ZeRO-3 shard-on-load: policy, reference, helpfulness RM, safety RM, value model loaded layer by layer";
    assert_eq!(log.matches(all).count(), 2, "both ranks load every model layer by layer:\n{log}");
    let log = run(&whole, true);
    assert!(log.contains("ZeRO-3 over 2 ranks") && !log.contains("shard-on-load"), "the comparison run loads whole:\n{log}");
    for f in ["final/model.safetensors", "final_value/model.safetensors", "samples.jsonl"] {
        assert!(
            std::fs::read(layered.join(f)).unwrap() == std::fs::read(whole.join(f)).unwrap(),
            "{f}: shard-on-load differs from the whole load"
        );
    }
    let (a, b) = (records(&layered, "metrics.jsonl"), records(&whole, "metrics.jsonl"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for k in ["reward_raw_mean", "kl", "policy_loss", "value_loss", "explained_variance", "eval_reward", "policy_grad_norm"] {
            assert_eq!(x[k], y[k], "step {}: {k}", x["step"]);
        }
    }

    // A bad layer tensor in each kind of model: trained causal LM, frozen causal LM, frozen and
    // trained scalar-head models.
    let gone = "model.layers.1.mlp.up_proj.weight";
    let bad = |name: &str, src: &Path, missing: bool| -> PathBuf {
        let dir = tmp.path().join(name);
        copy_dir(src, &dir);
        let mut t = model_tensors(src);
        let i = t.iter().position(|(n, _)| n == gone).unwrap();
        t[i].1 = t[i].1.narrow(0, 0, 3).contiguous();
        if missing {
            t.retain(|(n, _)| n != gone);
        }
        llama::checkpoint::write_safetensors(&dir.join("model.safetensors"), &t).unwrap();
        dir
    };
    let cases: [(&str, PathBuf); 5] = [
        ("policy", bad("bad-policy", &policy, false)),
        ("reference", bad("bad-reference", &reference, false)),
        ("helpfulness", bad("bad-helpfulness", &rm_head, false)),
        ("value", bad("bad-value", &rm_head, false)),
        ("missing", bad("missing-reference", &reference, true)),
    ];
    for (role, dir) in &cases {
        let pick =
            |r: &str, good: &Path| if *role == r || (*role == "missing" && r == "reference") { dir.clone() } else { good.to_path_buf() };
        let cfg = config(
            role,
            &pick("policy", &policy),
            &pick("reference", &reference),
            &pick("helpfulness", &rm_head),
            &pick("value", &rm_head),
        );
        let err = run_err(torchrun().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(tmp.path().join(format!("run-{role}"))).args(Z3));
        let file = dir.join("model.safetensors");
        let want = if *role == "missing" {
            format!("checkpoint {}: missing tensor {gone} (not in model.safetensors)", dir.display())
        } else {
            format!("checkpoint {}: {}: tensor {gone} has shape [3, {hidden}], the model expects [", dir.display(), file.display())
        };
        assert!(err.contains(&want), "{role}: expected `{want}` in:\n{err}");
    }
}

/// The `policy = "..."` folder of a config text.
fn policy_dir(text: &str) -> String {
    let line = text.lines().find(|l| l.starts_with("policy = ")).unwrap();
    line.trim_start_matches("policy = ").trim_matches('"').to_string()
}
