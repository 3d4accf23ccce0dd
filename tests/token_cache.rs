//! The training stages read the tokenized on-disk cache (`token_cache`): SFT and reward-model
//! runs through it end with weights bit-identical to runs that tokenize in memory, and a second
//! run reuses the cache it built.
mod common;
use common::*;
use std::path::Path;

fn write(dir: &Path, name: &str, body: String) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn sft_and_reward_through_the_cache_equal_in_memory_tokenization() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    run_ok(rlhf().args(["data", "demo", "--sft", "96", "--pairs", "80", "--prompts", "20", "--out"]).arg(&data));
    let cache = t.join("cache");
    let cache_set = format!("token_cache=\"{}\"", cache.display());

    // SFT: last-turn masks (so the cache's mask setting is exercised), eval split held out by seed.
    let sft_cfg = write(t, "sft.toml", format!(
        "init_preset = \"micro\"\ntrain_data = [\"{}\"]\neval_fraction = 0.1\nmax_seq_len = 96\ntrain_on = \"last_turn\"\n\
         [train]\nlr = 1e-3\nmicro_batch_size = 4\nmax_steps = 5\nseed = 3\ndevice = \"cpu\"\nthreads = 1\nsave_every = 0\neval_every = 5\n",
        data.join("sft.jsonl").display()));
    let plain = t.join("sft-plain");
    run_ok(rlhf().args(["sft", "--config"]).arg(&sft_cfg).arg("--out").arg(&plain));
    let cached = t.join("sft-cached");
    let out = rlhf().args(["sft", "--config"]).arg(&sft_cfg).args(["--set", &cache_set, "--out"]).arg(&cached).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("built"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        same_file(&plain.join("final/model.safetensors"), &cached.join("final/model.safetensors")),
        "SFT through the cache trained differently"
    );
    let again = t.join("sft-again");
    let out = rlhf().args(["sft", "--config"]).arg(&sft_cfg).args(["--set", &cache_set, "--out"]).arg(&again).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reused"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(same_file(&plain.join("final/model.safetensors"), &again.join("final/model.safetensors")));

    // Reward model from that SFT model, with a length cap that cuts some pairs.
    let rm_cfg = write(t, "rm.toml", format!(
        "model = \"{}\"\ntrain_data = [\"{}\"]\neval_data = [\"{}\"]\nmargin = \"small\"\nmax_seq_len = 40\n\
         [train]\nlr = 1e-3\nmicro_batch_size = 8\nmax_steps = 4\nseed = 1\ndevice = \"cpu\"\nthreads = 1\nsave_every = 0\neval_every = 0\n",
        plain.join("final").display(), data.join("preference_train.jsonl").display(), data.join("preference_test.jsonl").display()));
    let rm_plain = t.join("rm-plain");
    run_ok(rlhf().args(["reward", "train", "--config"]).arg(&rm_cfg).arg("--out").arg(&rm_plain));
    let rm_cached = t.join("rm-cached");
    run_ok(rlhf().args(["reward", "train", "--config"]).arg(&rm_cfg).args(["--set", &cache_set, "--out"]).arg(&rm_cached));
    assert!(
        same_file(&rm_plain.join("final/model.safetensors"), &rm_cached.join("final/model.safetensors")),
        "RM through the cache trained differently"
    );
    assert!(same_file(&rm_plain.join("eval/report.json"), &rm_cached.join("eval/report.json")), "RM eval through the cache differs");
}
