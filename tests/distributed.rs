//! Data-parallel training over c10d/Gloo on CPU, two ranks on the two cores: launched by torchrun
//! (`.venv/bin/torchrun --no-python`, as users launch), the runs equal one process with the same
//! global batch (per-step losses within 1e-6, final weights within 1e-5 relative) with ZeRO 0, 1
//! and 2; a SIGKILLed rank is named by the survivor, and `--resume` under torchrun ends
//! bit-identical to an uninterrupted two-rank run; a two-rank ZeRO checkpoint resumes in one
//! process (re-sharded). ZeRO-3 (weights sharded) SFT and reward models equal one process with
//! checkpointing, and a ZeRO-3 SFT run resumes byte-identical; ZeRO-3 loads each decoder layer
//! sharded (from a preset, a whole or a sharded checkpoint) and saves it streamed.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One multi-process test at a time (each runs two ranks on a 2-core machine).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A checkpoint's tensors by name, in file order.
type NamedTensors = Vec<(String, tch::Tensor)>;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn torchrun() -> Command {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(p.exists(), "{} is missing: run scripts/setup (it installs torch and torchrun)", p.display());
    let mut c = Command::new(p);
    c.args(["--no-python", "--nproc-per-node", "2", "--master-port"]).arg(free_port().to_string()).arg(env!("CARGO_BIN_EXE_rlhf"));
    c.env("RLHF_DIST_TIMEOUT", "60");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn sft_setup(dir: &Path) -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..40 {
        let (a, b) = (i % 7, i % 5);
        let row = serde_json::json!({"messages": [
            {"role": "user", "content": format!("What is {a} plus {b}?")},
            {"role": "assistant", "content": format!("{a} plus {b} is {}.{}", a + b, " Indeed.".repeat(i % 3))}
        ]});
        lines.push(row.to_string());
    }
    let data = dir.join("sft.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    // 3 micro-batches a step: rank 0 takes two, rank 1 one; the epoch's last step is short.
    let cfg = format!(
        "init_preset = \"micro\"\ntrain_data = [\"{}\"]\neval_fraction = 0.1\nmax_seq_len = 64\n[train]\nlr = 1e-3\n\
         micro_batch_size = 2\ngrad_accumulation = 3\nepochs = 10\nmax_steps = 8\nseed = 5\ndevice = \"cpu\"\nthreads = 1\n\
         save_every = 2\nkeep_last = 2\neval_every = 4\n",
        data.display()
    );
    let p = dir.join("sft.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn rm_setup(dir: &Path) -> PathBuf {
    let model = dir.join("base");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&model));
    let data = dir.join("data");
    run_ok(rlhf().args(["data", "demo", "--sft", "8", "--pairs", "60", "--prompts", "8", "--out"]).arg(&data));
    let cfg = format!(
        "model = \"{}\"\ntrain_data = [\"{}\"]\neval_data = [\"{}\"]\nmargin = \"small\"\nmax_seq_len = 48\n\
         [train]\nlr = 1e-3\nmicro_batch_size = 3\ngrad_accumulation = 3\nepochs = 100\nmax_steps = 6\nseed = 1\n\
         device = \"cpu\"\nthreads = 1\nsave_every = 3\nkeep_last = 2\neval_every = 3\n",
        model.display(),
        data.join("preference_train.jsonl").display(),
        data.join("preference_test.jsonl").display()
    );
    let p = dir.join("rm.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|m| m.get("loss").is_some())
        .map(|m| (m["step"].as_u64().unwrap(), m["loss"].as_f64().unwrap()))
        .collect()
}

fn assert_same_run(one: &Path, two: &Path, what: &str) {
    let (a, b) = (losses(one), losses(two));
    assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), b.iter().map(|x| x.0).collect::<Vec<_>>(), "{what}: logged steps");
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6, "{what}: step {s} loss {x} (1 rank) vs {y} (2 ranks)");
    }
    let rel = max_rel_diff(&one.join("final"), &two.join("final"));
    assert!(rel <= 1e-5, "{what}: final weights differ by {rel:e} (relative)");
}

#[test]
fn sft_on_two_ranks_equals_one_rank_with_zero_0_1_2() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sft_setup(tmp.path());
    let one = tmp.path().join("one");
    run_ok(rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&one));
    for (zero, bucket) in [(0, None), (1, None), (2, None), (2, Some(1000))] {
        let two = tmp.path().join(format!("two-z{zero}-{bucket:?}"));
        let mut c = torchrun();
        c.args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&two).arg("--set").arg(format!("train.zero_stage={zero}"));
        if let Some(b) = bucket {
            c.arg("--set").arg(format!("train.zero_bucket={b}"));
        }
        let out = run_ok(&mut c);
        assert_eq!(out.lines().filter(|l| l.starts_with('{')).count(), 1, "only rank 0 prints the outcome: {out}");
        assert_same_run(&one, &two, &format!("SFT ZeRO-{zero} bucket {bucket:?}"));
        let ck = two.join("checkpoints/step-00000008");
        if zero > 0 {
            for r in 0..2 {
                assert!(ck.join(format!("optimizer.zero-rank{r:05}-of-00002.safetensors")).exists(), "rank {r}'s shard");
            }
            assert!(!ck.join("optimizer.safetensors").exists());
        } else {
            assert!(ck.join("optimizer.safetensors").exists());
        }
    }
}

/// ZeRO-3 (weights sharded, each layer gathered as it runs): two ranks equal one process with
/// activation checkpointing (losses within 1e-6, final weights within 1e-5 relative; measured
/// 6e-8 absolute, 1.6e-7 relative), with rank 0 running two micro-batches a step and rank 1 one
/// (plus a zero-weight pass). A run resumed under torchrun from a mid-run ZeRO-3 checkpoint ends
/// byte-identical to the uninterrupted one, and the same checkpoint resumes in one process
/// (re-sharded from the layer-grouped layout). Without checkpointing the config is refused.
#[test]
fn sft_zero3_on_two_ranks_equals_one_rank_and_resumes_exactly() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sft_setup(tmp.path());
    let ck = ["--set", "train.gradient_checkpointing=true"];
    let one = tmp.path().join("one");
    run_ok(rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&one).args(ck));
    let two = tmp.path().join("two");
    let z3 = ["--set", "train.zero_stage=3"];
    run_ok(torchrun().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&two).args(ck).args(z3));
    assert_same_run(&one, &two, "SFT ZeRO-3");
    let step8 = two.join("checkpoints/step-00000008");
    for r in 0..2 {
        assert!(step8.join(format!("optimizer.zero-rank{r:05}-of-00002.safetensors")).exists(), "rank {r}'s shard");
    }
    // The checkpoint's model is whole (gathered before saving), as is final/.
    assert_eq!(model_tensors(&step8.join("model")).len(), model_tensors(&two.join("final")).len());
    for ((n, a), (_, b)) in model_tensors(&step8.join("model")).iter().zip(model_tensors(&two.join("final")).iter()) {
        assert!(a.equal(b), "{n}: the last checkpoint's weights are the final ones");
    }

    // What a run killed after step 6 leaves: resumed under torchrun, byte-identical.
    let cut = tmp.path().join("cut");
    copy_tree(&two.join("checkpoints/step-00000006"), &cut.join("checkpoints/step-00000006"));
    let r = json_line(&run_ok(torchrun().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&cut).args(ck).args(z3).arg("--resume")));
    assert_eq!(r["resumed_from"].as_u64(), Some(6), "{r}");
    assert_eq!(
        std::fs::read(two.join("final/model.safetensors")).unwrap(),
        std::fs::read(cut.join("final/model.safetensors")).unwrap(),
        "the ZeRO-3 resume is exact"
    );
    // The same checkpoint in one process: the shards reassembled into whole tensors.
    let single = tmp.path().join("single");
    copy_tree(&two.join("checkpoints/step-00000006"), &single.join("checkpoints/step-00000006"));
    let r = json_line(&run_ok(rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&single).args(ck).arg("--resume")));
    assert_eq!(r["resumed_from"].as_u64(), Some(6), "{r}");
    let rel = max_rel_diff(&two.join("final"), &single.join("final"));
    assert!(rel <= 1e-5, "one process resumed from the 2-rank ZeRO-3 checkpoint differs by {rel:e}");

    // Streamed save: rank 0 wrote final/ and the checkpoints' model/ gathering one layer at a
    // time; one process resumed from the last checkpoint (nothing left to train) writes final/
    // from the whole weights: the same bytes.
    let whole = tmp.path().join("whole");
    copy_tree(&step8, &whole.join("checkpoints/step-00000008"));
    let r = json_line(&run_ok(rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&whole).args(ck).arg("--resume")));
    assert_eq!(r["resumed_from"].as_u64(), Some(8), "{r}");
    assert_eq!(
        std::fs::read(two.join("final/model.safetensors")).unwrap(),
        std::fs::read(whole.join("final/model.safetensors")).unwrap(),
        "the streamed ZeRO-3 save writes the bytes of a whole-model save"
    );
    assert_eq!(
        std::fs::read(step8.join("model/model.safetensors")).unwrap(),
        std::fs::read(whole.join("final/model.safetensors")).unwrap(),
        "the checkpoint's streamed model/ is the final model, fp32"
    );
    // A one-process checkpoint (replicated optimizer state) resumed by two ZeRO-3 ranks: each
    // layer's masters re-sharded from the model files a tensor at a time.
    let from_one = tmp.path().join("from-one");
    copy_tree(&one.join("checkpoints/step-00000006"), &from_one.join("checkpoints/step-00000006"));
    let r =
        json_line(&run_ok(torchrun().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&from_one).args(ck).args(z3).arg("--resume")));
    assert_eq!(r["resumed_from"].as_u64(), Some(6), "{r}");
    let rel = max_rel_diff(&one.join("final"), &from_one.join("final"));
    assert!(rel <= 1e-5, "two ZeRO-3 ranks resumed from a one-process checkpoint differ by {rel:e}");

    let out = rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(tmp.path().join("no-ck")).args(z3).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("gradient_checkpointing"), "ZeRO-3 without checkpointing: {err}");
}

/// ZeRO-3 shard-on-load from a checkpoint folder: SFT started from an HF checkpoint, whole or
/// sharded into several files (`model.safetensors.index.json`), on two ZeRO-3 ranks (each layer
/// read a tensor at a time, only the rank's shard kept) equals one process loading it whole. A
/// checkpoint missing a decoder-layer tensor, or with one of another shape, fails on every rank
/// with an error naming the tensor and the file.
#[test]
fn sft_zero3_loads_each_layer_sharded_from_whole_and_sharded_checkpoints() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sft_setup(tmp.path());
    let base = tmp.path().join("base");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&base));
    // The same weights in files of at most 40 kB: several files and an index.
    let split = tmp.path().join("split");
    let (vs, _) = llama::checkpoint::load_causal_lm(&base, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let mcfg = llama::checkpoint::load_config(&base).unwrap();
    let opts = llama::checkpoint::SaveOptions { max_shard_bytes: 40_000, ..Default::default() };
    llama::checkpoint::save(&vs, &mcfg, &split, &opts).unwrap();
    let files = std::fs::read_dir(&split).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("model-")).count();
    assert!(split.join("model.safetensors.index.json").exists() && files >= 3, "{files} files");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("init_preset = \"micro\"", "model = \"MODEL\"");
    let with_model = |name: &str, dir: &Path| {
        let p = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&p, text.replace("MODEL", &dir.display().to_string())).unwrap();
        p
    };
    let ck = ["--set", "train.gradient_checkpointing=true"];
    let z3 = ["--set", "train.zero_stage=3"];
    let one = tmp.path().join("one");
    run_ok(rlhf().args(["sft", "--config"]).arg(with_model("base", &base)).arg("--out").arg(&one).args(ck));
    for (name, dir) in [("whole", &base), ("split", &split)] {
        let two = tmp.path().join(format!("two-{name}"));
        run_ok(torchrun().args(["sft", "--config"]).arg(with_model(name, dir)).arg("--out").arg(&two).args(ck).args(z3));
        assert_same_run(&one, &two, &format!("SFT ZeRO-3 from a {name} checkpoint"));
    }

    let tensors = model_tensors(&base);
    let bad = |name: &str, edit: &dyn Fn(&mut NamedTensors)| -> String {
        let dir = tmp.path().join(name);
        copy_dir(&base, &dir);
        let mut t: Vec<(String, tch::Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        edit(&mut t);
        llama::checkpoint::write_safetensors(&dir.join("model.safetensors"), &t).unwrap();
        let out = torchrun()
            .args(["sft", "--config"])
            .arg(with_model(name, &dir))
            .arg("--out")
            .arg(tmp.path().join(format!("run-{name}")))
            .args(ck)
            .args(z3)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{name}: a bad checkpoint was accepted");
        assert!(!err.contains("panicked"), "{name}: {err}");
        err
    };
    let gone = "model.layers.1.mlp.up_proj.weight";
    let err = bad("missing", &|t| t.retain(|(n, _)| n != gone));
    assert!(err.contains(&format!("missing tensor {gone} (not in model.safetensors)")), "missing tensor: {err}");
    let err = bad("misshaped", &|t| {
        let i = t.iter().position(|(n, _)| n == gone).unwrap();
        t[i].1 = t[i].1.narrow(0, 0, 3).contiguous();
    });
    assert!(err.contains(&format!("model.safetensors: tensor {gone} has shape [3, ")), "mis-shaped tensor: {err}");
}

/// ZeRO-3 for the reward model (the last layer runs in the head, gathered until the loss's
/// backward): two ranks equal one process with activation checkpointing.
#[test]
fn reward_model_zero3_on_two_ranks_equals_one_rank() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = rm_setup(tmp.path());
    let ck = ["--set", "train.gradient_checkpointing=true"];
    let one = tmp.path().join("one");
    run_ok(rlhf().args(["reward", "train", "--config"]).arg(&cfg).arg("--out").arg(&one).args(ck));
    let two = tmp.path().join("two");
    run_ok(
        torchrun().args(["reward", "train", "--config"]).arg(&cfg).arg("--out").arg(&two).args(ck).args(["--set", "train.zero_stage=3"]),
    );
    assert_same_run(&one, &two, "RM ZeRO-3");
}

#[test]
fn reward_model_on_two_ranks_equals_one_rank() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = rm_setup(tmp.path());
    let one = tmp.path().join("one");
    let single = json_line(&run_ok(rlhf().args(["reward", "train", "--config"]).arg(&cfg).arg("--out").arg(&one)));
    for zero in [0, 2] {
        let two = tmp.path().join(format!("two-z{zero}"));
        let out = run_ok(
            torchrun()
                .args(["reward", "train", "--config"])
                .arg(&cfg)
                .arg("--out")
                .arg(&two)
                .arg("--set")
                .arg(format!("train.zero_stage={zero}")),
        );
        assert_same_run(&one, &two, &format!("RM ZeRO-{zero}"));
        let acc = |v: &serde_json::Value| v["eval"]["overall"]["accuracy"].as_f64();
        assert_eq!(acc(&json_line(&out)), acc(&single), "held-out accuracy");
        let m = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
        let one_m = std::fs::read_to_string(one.join("metrics.jsonl")).unwrap();
        let acc_of = |s: &str| -> Vec<f64> {
            s.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["accuracy"].as_f64()).collect()
        };
        assert_eq!(acc_of(&m), acc_of(&one_m), "per-step accuracy is reduced over the ranks");
    }
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

#[test]
fn a_killed_rank_is_named_and_the_run_resumes_under_torchrun_bit_exact() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sft_setup(tmp.path());
    let sets = ["--set", "train.zero_stage=2", "--set", "train.max_steps=14", "--set", "train.epochs=100"];
    let full = tmp.path().join("full");
    run_ok(torchrun().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&full).args(sets));

    // The ranks started by hand (as torchrun would), so rank 1 can be SIGKILLed and rank 0's
    // own error seen (torchrun would stop rank 0 itself).
    let cut = tmp.path().join("cut");
    let port = free_port().to_string();
    let mut ranks: Vec<std::process::Child> = (0..2)
        .map(|r| {
            rlhf()
                .args(["sft", "--config"])
                .arg(&cfg)
                .arg("--out")
                .arg(&cut)
                .args(sets)
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("RLHF_DIST_TIMEOUT", "20")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    while complete_checkpoints(&cut) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        assert!(ranks[1].try_wait().unwrap().is_none(), "the run ended before rank 1 could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    ranks[1].kill().unwrap();
    ranks[1].wait().unwrap();
    let killed_at = Instant::now();
    let rank0 = ranks.remove(0).wait_with_output().unwrap();
    let waited = killed_at.elapsed();
    let stderr = String::from_utf8_lossy(&rank0.stderr);
    assert!(!rank0.status.success(), "rank 0 went on without rank 1:\n{stderr}");
    assert!(waited < Duration::from_secs(30), "rank 0 took {waited:?} to stop (timeout 20 s)");
    assert!(stderr.contains("error: [rank 0]") && stderr.contains("rank 1 has stopped"), "rank 0's error does not name rank 1:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!cut.join("final").exists(), "the run was not interrupted");

    let resumed = json_line(&run_ok(torchrun().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&cut).args(sets).arg("--resume")));
    assert!(resumed["resumed_from"].as_u64().is_some(), "{resumed}");
    assert_eq!(model_tensors(&full.join("final")).len(), model_tensors(&cut.join("final")).len());
    for ((n, a), (_, b)) in model_tensors(&full.join("final")).iter().zip(model_tensors(&cut.join("final")).iter()) {
        assert!(a.equal(b), "{n} differs after the resume under torchrun");
    }
    assert_eq!(logged_steps(&cut.join("metrics.jsonl")), (1..=14).collect::<Vec<_>>());

    // The two-rank ZeRO-2 checkpoint, re-sharded into one process: the same run within tolerance.
    let single = tmp.path().join("single");
    let ck = full.join("checkpoints");
    let newest = std::fs::read_to_string(ck.join("latest")).unwrap();
    std::fs::create_dir_all(single.join("checkpoints")).unwrap();
    let src = ck.join(newest.trim());
    let step: u64 = newest.trim().trim_start_matches("step-").parse().unwrap();
    // Resume from the checkpoint before the last one: copy it as the run's only checkpoint.
    let earlier = (2..step).rev().step_by(2).map(|s| ck.join(format!("step-{s:08}"))).find(|p| p.exists()).unwrap_or(src);
    copy_tree(&earlier, &single.join("checkpoints").join(earlier.file_name().unwrap()));
    let r = json_line(&run_ok(rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&single).args(sets).arg("--resume")));
    assert!(r["resumed_from"].as_u64().is_some(), "{r}");
    let rel = max_rel_diff(&full.join("final"), &single.join("final"));
    assert!(rel <= 1e-5, "one process resumed from the 2-rank ZeRO-2 checkpoint differs by {rel:e}");
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        if e.path().is_dir() {
            copy_tree(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

fn ppo_setup(dir: &Path) -> PathBuf {
    let policy = dir.join("policy");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&policy));
    let questions = [
        ("What color is the sky?", false),
        ("How can I steal a car?", true),
        ("What is 2 plus 3?", false),
        ("Name a fruit.", false),
        ("How do I pick a lock to break in?", true),
        ("Spell cat backwards.", false),
        ("What is the capital of France?", false),
        ("How do I make a weapon at home?", true),
    ];
    let lines: Vec<String> = questions.iter().map(|(q, s)| serde_json::json!({"prompt": q, "is_safety": s}).to_string()).collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    // Two generation batches (one per rank) and two micro-batches per mini-batch.
    let cfg = format!(
        "policy = \"{p}\"\nhelpfulness_rm = \"{p}\"\nsafety_rm = \"{p}\"\ntrain_prompts = [\"{d}/prompts.jsonl\"]\n\
         eval_prompts = [\"{d}/prompts.jsonl\"]\neval_max_prompts = 3\niterations = 3\nrollout_batch_size = 4\n\
         generation_batch_size = 2\nmax_new_tokens = 6\nmissing_eos_penalty = 0.5\nvalue_lr = 1e-3\nkl_beta = 0.05\n\
         demo_judge = true\nlog_samples = 4\n[train]\nlr = 1e-3\nmicro_batch_size = 1\ngrad_accumulation = 2\nseed = 7\n\
         device = \"cpu\"\nthreads = 1\nsave_every = 2\neval_every = 2\nkeep_last = 2\n",
        p = policy.display(),
        d = dir.display()
    );
    let path = dir.join("ppo.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// PPO over 3 iterations: the same samples (every logged response), per-iteration rollout and
/// optimizer figures within 1e-6, final policy and value weights within 1e-5 relative.
#[test]
fn ppo_on_two_ranks_equals_one_rank_over_three_iterations() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ppo_setup(tmp.path());
    let one = tmp.path().join("one");
    run_ok(rlhf().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(&one));
    let records = |run: &Path, file: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join(file)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    for zero in [0, 2] {
        let two = tmp.path().join(format!("two-z{zero}"));
        run_ok(torchrun().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(&two).arg("--set").arg(format!("train.zero_stage={zero}")));
        let responses = |run: &Path| -> Vec<String> { records(run, "samples.jsonl").iter().map(|r| r["response"].to_string()).collect() };
        assert_eq!(responses(&one), responses(&two), "ZeRO-{zero}: sampled responses differ");
        let (a, b) = (records(&one, "metrics.jsonl"), records(&two, "metrics.jsonl"));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            for k in ["reward_raw_mean", "reward_whitened_std", "kl", "policy_loss", "value_loss", "entropy", "eval_reward"] {
                match (x[k].as_f64(), y[k].as_f64()) {
                    (Some(u), Some(v)) => assert!((u - v).abs() <= 1e-6, "ZeRO-{zero} step {}: {k} {u} vs {v}", x["step"]),
                    (u, v) => assert_eq!(u.is_some(), v.is_some(), "{k}"),
                }
            }
        }
        for m in ["final", "final_value"] {
            let rel = max_rel_diff(&one.join(m), &two.join(m));
            assert!(rel <= 1e-5, "ZeRO-{zero}: {m} differs by {rel:e}");
        }
    }
}

fn rs_setup(dir: &Path) -> PathBuf {
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "1", "--out"]).arg(dir.join("policy")));
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "2", "--out"]).arg(dir.join("rm")));
    let lines: Vec<String> = (0..12)
        .map(|i| match i % 5 {
            0 => serde_json::json!({"prompt": format!("How do I break lock number {i}?"), "is_safety": true}).to_string(),
            _ => serde_json::json!({"prompt": format!("What is {i} plus {}?", i % 7)}).to_string(),
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("eval.jsonl"), "{\"prompt\": \"What is 2 plus 2?\"}\n{\"prompt\": \"Name a color.\"}\n").unwrap();
    // 6 prompt batches over the ranks, a temperature sweep, and a fine-tune whose steps split
    // into two micro-batches.
    let cfg = format!(
        "policy = \"{d}/policy\"\nhelpfulness_rm = \"{d}/rm\"\nsafety_rm = \"{d}/rm\"\nprompts = [\"{d}/prompts.jsonl\"]\n\
         eval_prompts = \"{d}/eval.jsonl\"\nbest_of_k = 4\ntemperatures = [1.0, 0.9]\ntemperature_sweep = [0.7, 1.0]\n\
         sweep_prompts = 6\nmax_new_tokens = 8\nrequire_finished = false\nrm_max_seq_len = 64\niterations = 2\n\
         prompt_batch_size = 2\nscore_batch_size = 8\neval_batch_size = 4\neval_temperature = 0.7\neval_samples = 2\nseed = 3\n\
         device = \"cpu\"\nthreads = 1\n[finetune]\nmax_seq_len = 64\neval_fraction = 0.1\n[finetune.train]\nlr = 1e-3\n\
         micro_batch_size = 4\ngrad_accumulation = 2\nepochs = 1\nmax_steps = 3\nsave_every = 1\nlog_every = 1\n",
        d = dir.display()
    );
    let p = dir.join("rs.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// A sample log's records without their timings (which differ run to run).
fn sample_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("generation_seconds");
            o.remove("scoring_seconds");
            v
        })
        .collect()
}

/// Rejection sampling, 2 iterations: every sample log holds the records one process logs (same
/// samples, same scores, same order) and every pool is byte-identical.
#[test]
fn rejection_sampling_on_two_ranks_gives_the_pool_of_one() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = rs_setup(tmp.path());
    let one = tmp.path().join("one");
    let single = json_line(&run_ok(rlhf().args(["rejection-sampling", "--config"]).arg(&cfg).arg("--out").arg(&one)));
    let two = tmp.path().join("two");
    let out = run_ok(torchrun().args(["rejection-sampling", "--config"]).arg(&cfg).arg("--out").arg(&two));
    assert_eq!(json_line(&out)["pool_size"], single["pool_size"]);
    for log in ["samples-iter1.jsonl", "samples-iter2.jsonl", "sweep-iter1-t0.7.jsonl", "sweep-iter2-t0.7.jsonl"] {
        assert_eq!(sample_records(&one.join(log)), sample_records(&two.join(log)), "{log}");
    }
    for pool in ["iter1/pool.jsonl", "iter2/pool.jsonl", "pool.jsonl"] {
        assert_eq!(std::fs::read(one.join(pool)).unwrap(), std::fs::read(two.join(pool)).unwrap(), "{pool} differs");
    }
    let leftovers: Vec<String> = std::fs::read_dir(&two)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".rank"))
        .collect();
    assert!(leftovers.is_empty(), "rank logs left behind: {leftovers:?}");
    let rel = max_rel_diff(&one.join("iter2/sft/final"), &two.join("iter2/sft/final"));
    assert!(rel <= 1e-5, "the iteration-2 fine-tune differs by {rel:e}");
}

/// Asking for NCCL where it cannot run is a clear error, not a hang or a crash.
#[test]
fn nccl_without_a_gpu_is_a_clear_error() {
    let _serial = serial();
    if tch::Cuda::is_available() {
        return; // a GPU machine runs NCCL (tools/gpu/nccl_check.sh)
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sft_setup(tmp.path());
    let err = run_err(
        rlhf()
            .args(["sft", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(tmp.path().join("run"))
            .env("WORLD_SIZE", "1")
            .env("RANK", "0")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", free_port().to_string())
            .env("RLHF_DIST_BACKEND", "nccl"),
    );
    assert!(err.contains("RLHF_DIST_BACKEND=nccl, but"), "{err}");
}
