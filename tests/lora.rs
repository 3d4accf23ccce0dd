//! LoRA through the binary: an SFT run trains only its adapter, writes `final/` as a PEFT adapter
//! folder (and `final_merged/` on request), and resumes bit-identically after SIGKILL (dropout
//! on); a reward model and PPO then train their own adapters on top of that adapter folder, which
//! every stage reads as a model (base + merged adapter).
mod common;
use common::*;
use llama::checkpoint as ck;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const LORA: &str = "[lora]\nr = 4\nalpha = 8.0\ndropout = 0.1\ntargets = [\"q_proj\", \"v_proj\", \"gate_proj\"]\nmerge = true\n";

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("base");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&base));
    let data = dir.join("data");
    run_ok(rlhf().args(["data", "demo", "--sft", "48", "--pairs", "64", "--prompts", "8", "--out"]).arg(&data));
    (base, data)
}

fn sft_config(dir: &Path, base: &Path, data: &Path) -> PathBuf {
    let cfg = format!(
        "model = \"{}\"\ntrain_data = [\"{}\"]\neval_fraction = 0.1\nmax_seq_len = 64\n{LORA}\
         [train]\nlr = 1e-2\nmicro_batch_size = 4\ngrad_accumulation = 2\nepochs = 10\nmax_steps = 10\nseed = 5\n\
         device = \"cpu\"\nthreads = 1\nsave_every = 2\nkeep_last = 2\neval_every = 5\n",
        base.display(),
        data.join("sft.jsonl").display()
    );
    let p = dir.join("sft.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn logits(dir: &Path) -> Tensor {
    let (_vs, m) = ck::load_causal_lm(dir, Device::Cpu, Kind::Float).unwrap();
    let _g = tch::no_grad_guard();
    let ids = Tensor::from_slice(&[1i64, 17, 42, 99, 7, 3, 150, 8]).view([1, 8]);
    let pos = Tensor::arange(8, (Kind::Int64, Device::Cpu)).view([1, 8]);
    m.lm_logits(&m.forward(&ids, &pos, &llama::model::Mask::Causal, None))
}

fn diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

#[test]
fn lora_sft_resumes_exactly_and_rm_and_ppo_train_adapters_on_its_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = setup(tmp.path());
    let cfg = sft_config(tmp.path(), &base, &data);
    let full = tmp.path().join("sft");
    let done = json_line(&run_ok(rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&full)));
    assert_eq!(done["steps"].as_u64(), Some(10), "{done}");

    // final/ is a PEFT adapter of the base model: adapter tensors only, a few KB.
    let fin = full.join("final");
    assert!(fin.join("adapter_config.json").exists() && !fin.join("config.json").exists());
    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fin.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(conf["base_model_name_or_path"].as_str().map(PathBuf::from), Some(std::fs::canonicalize(&base).unwrap()));
    assert_eq!(conf["task_type"], "CAUSAL_LM");
    let files = ck::CheckpointFiles::open_file(&fin.join("adapter_model.safetensors")).unwrap();
    let names: Vec<&str> = files.names().collect();
    assert_eq!(names.len(), 2 * 3 * 2, "A and B of 3 targets in 2 layers: {names:?}");
    assert!(fin.join("tokenizer.json").exists(), "the tokenizer travels with the adapter");
    // The adapter trained (B moved off zero) and the base did not.
    let b = files.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    assert!(f64::try_from(b.abs().max()).unwrap() > 0.0, "B is still zero: the adapter did not train");
    let (a, m) = (logits(&fin), logits(&full.join("final_merged")));
    assert!(diff(&a, &m) < 1e-4, "final_merged differs from the adapter by {:e}", diff(&a, &m));
    assert!(diff(&a, &logits(&base)) > 1e-3, "the adapter changes the model");

    // SIGKILL after a checkpoint, resume: the adapter is bit-identical (dropout masks are seeded
    // per step), and checkpoints hold the adapter, not the base.
    let cut = tmp.path().join("cut");
    let latest = cut.join("checkpoints/latest");
    kill_when(
        rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&cut),
        || latest.exists(),
        Duration::from_secs(120),
        Duration::from_millis(100),
        "a checkpoint",
    );
    let ckpt = cut.join("checkpoints").join(std::fs::read_to_string(&latest).unwrap().trim()).join("model");
    assert!(ckpt.join("adapter_model.safetensors").exists() && !ckpt.join("model.safetensors").exists());
    let resumed = json_line(&run_ok(rlhf().args(["sft", "--resume", "--config"]).arg(&cfg).arg("--out").arg(&cut)));
    assert!(resumed["resumed_from"].as_u64().is_some(), "{resumed}");
    let x = std::fs::read(fin.join("adapter_model.safetensors")).unwrap();
    let y = std::fs::read(cut.join("final/adapter_model.safetensors")).unwrap();
    assert!(x == y, "the resumed adapter differs from the uninterrupted run's");

    // A reward model with its own adapter (and the score head) on the SFT adapter folder.
    let rm_cfg = tmp.path().join("rm.toml");
    std::fs::write(
        &rm_cfg,
        format!(
            "model = \"{}\"\ntrain_data = [\"{}\"]\nmax_seq_len = 48\n[lora]\nr = 2\n\
             [train]\nlr = 1e-2\nmicro_batch_size = 4\ngrad_accumulation = 1\nepochs = 1\nmax_steps = 4\nseed = 1\n\
             device = \"cpu\"\nthreads = 1\n",
            fin.display(),
            data.join("preference_train.jsonl").display()
        ),
    )
    .unwrap();
    let rm = tmp.path().join("rm");
    run_ok(rlhf().args(["reward", "train", "--config"]).arg(&rm_cfg).arg("--out").arg(&rm));
    let rm_final = rm.join("final");
    let rm_conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rm_final.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(rm_conf["task_type"], "SEQ_CLS");
    assert_eq!(rm_conf["modules_to_save"], serde_json::json!(["score"]));
    let rm_files = ck::CheckpointFiles::open_file(&rm_final.join("adapter_model.safetensors")).unwrap();
    assert!(rm_files.contains("base_model.model.score.weight"), "the trained head is saved whole");

    // PPO: policy = the SFT adapter, reward model and value model = the RM adapter (a chain of
    // two adapters on the base); both trained models get adapters.
    let prompts: Vec<String> = ["What color is the sky?", "Name a fruit.", "How can I steal a car?", "What is 2 plus 3?"]
        .iter()
        .map(|q| serde_json::json!({"prompt": q}).to_string())
        .collect();
    std::fs::write(tmp.path().join("prompts.jsonl"), prompts.join("\n") + "\n").unwrap();
    let ppo_cfg = tmp.path().join("ppo.toml");
    std::fs::write(
        &ppo_cfg,
        format!(
            "policy = \"{}\"\nhelpfulness_rm = \"{}\"\ntrain_prompts = [\"{}\"]\niterations = 2\nrollout_batch_size = 4\n\
             generation_batch_size = 4\nmax_new_tokens = 6\nold_logprobs = \"recompute\"\n[lora]\nr = 2\n\
             [train]\nlr = 1e-2\nmicro_batch_size = 2\ngrad_accumulation = 1\nseed = 7\ndevice = \"cpu\"\nthreads = 1\n",
            fin.display(),
            rm_final.display(),
            tmp.path().join("prompts.jsonl").display()
        ),
    )
    .unwrap();
    let ppo = tmp.path().join("ppo");
    run_ok(rlhf().args(["ppo", "--config"]).arg(&ppo_cfg).arg("--out").arg(&ppo));
    for d in ["final", "final_value"] {
        assert!(ppo.join(d).join("adapter_config.json").exists(), "{d} is an adapter");
    }
    // The PPO adapter loads through the chain: base, SFT adapter, PPO adapter.
    let p = logits(&ppo.join("final"));
    assert!(diff(&p, &a) > 0.0 && diff(&p, &a) < 1.0, "the PPO adapter moved the policy a little: {:e}", diff(&p, &a));
    // With π_old recomputed, the first mini-batch's ratio starts at exactly 1.
    let metrics = std::fs::read_to_string(ppo.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["logprob_max_diff"].as_f64(), Some(0.0), "{first}");
}
