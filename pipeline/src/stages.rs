//! Runs one stage from its typed config in its folder, always resuming there: the same entry
//! points as the `rlhf` commands (`sft::run`, `reward::run`, `rejection_sampling::run`,
//! `ppo::run`), the demo world's files, a mixture, or a random preset model.
use crate::error::StageFailure;
use crate::plan::StageConfig;
use std::path::{Path, PathBuf};

/// What a stage produced: its output (model or data folder, or a file) and summary metrics.
pub struct StageOutput {
    pub output: PathBuf,
    pub metrics: serde_json::Value,
}

/// Runs a stage in `dir` (resuming from what an interrupted run of it left there).
pub fn run_stage(cfg: &StageConfig, dir: &Path) -> Result<StageOutput, StageFailure> {
    let done = |output: PathBuf, metrics: serde_json::Value| Ok(StageOutput { output, metrics });
    match cfg {
        StageConfig::DemoData(c) => {
            let out = dir.join("data");
            let sizes = demo_world::DemoSizes { sft: c.sft, pairs: c.pairs, prompts: c.prompts };
            let m = demo_world::write_demo(&out, sizes, c.seed)?;
            done(out, serde_json::to_value(&m)?)
        }
        StageConfig::Mix(c) => {
            let mut spec = datasets::mixture::MixSpec::paper(c.target_kind()?);
            spec.seed = c.seed;
            if let Some(r) = c.ratio {
                spec.primary_share = r;
            }
            let out = dir.join("mix.jsonl");
            let mut inputs = c.data.clone();
            let mut replayed = None;
            if let Some(n) = c.replay_records {
                let file = dir.join("replay.jsonl");
                replayed = Some(replay_sample(&c.replay, n, c.seed, &file)?);
                inputs.push(file);
            }
            let mut summary = serde_json::to_value(&datasets::mixture::mix_files(&inputs, &out, None, &spec)?)?;
            if let Some((of, n)) = replayed {
                summary["replay"] = serde_json::json!({"of": of, "records": n});
            }
            done(out, summary)
        }
        StageConfig::Init(c) => {
            let out = dir.join("model");
            training::stage::init_model(&c.preset, c.seed, tch::Kind::Float, &out)?;
            done(out, serde_json::json!({"preset": c.preset}))
        }
        StageConfig::Sft(c) => {
            let o = sft::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::Reward(c) => {
            let o = reward::run(c, dir, true)?;
            done(o.run.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::RejectionSampling(c) => {
            let o = rejection_sampling::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::Ppo(c) => {
            let o = ppo::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::SamplePairs(c) => {
            let (out, m) = crate::pairs::sample_pairs(c, dir)?;
            done(out, m)
        }
        StageConfig::Annotate(c) => {
            let (out, m) = crate::pairs::annotate_stage(c, dir)?;
            done(out, m)
        }
        StageConfig::Gatt(c) => {
            let o = gatt::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::ContextDistillation(c) => {
            let o = context_distillation::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
    }
}

/// A uniform sample of `n` comparisons of `files` (all when fewer), drawn by `seed`, written to
/// `out` in input order; returns (comparisons in the files, sampled).
pub fn replay_sample(files: &[PathBuf], n: usize, seed: u64, out: &Path) -> Result<(usize, usize), StageFailure> {
    let mut all: Vec<datasets::PreferenceRecord> = Vec::new();
    for f in files {
        all.extend(datasets::io::read_all::<datasets::PreferenceRecord>(f)?);
    }
    let mut keep: Vec<usize> = llama::rng::SplitMix64::permutation(all.len(), seed, 0).into_iter().take(n).collect();
    keep.sort_unstable();
    let sample: Vec<datasets::PreferenceRecord> = keep.iter().map(|&i| all[i].clone()).collect();
    datasets::write_all(out, &sample)?;
    Ok((all.len(), sample.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_takes_a_seeded_uniform_sample_in_input_order() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = |i: usize| datasets::PreferenceRecord {
            prompt: vec![llama::Message::user(format!("q{i}"))],
            chosen: format!("c{i}"),
            rejected: format!("r{i}"),
            rating: None,
            kind: None,
            chosen_safe: None,
            rejected_safe: None,
            source: None,
        };
        let (a, b) = (tmp.path().join("a.jsonl"), tmp.path().join("b.jsonl"));
        datasets::write_all(&a, &(0..30).map(rec).collect::<Vec<_>>()).unwrap();
        datasets::write_all(&b, &(30..50).map(rec).collect::<Vec<_>>()).unwrap();
        let read = |p: &Path| -> Vec<usize> {
            let rs: Vec<datasets::PreferenceRecord> = datasets::io::read_all(p).unwrap();
            rs.iter().map(|r| r.chosen[1..].parse().unwrap()).collect()
        };
        let out = tmp.path().join("replay.jsonl");
        assert_eq!(replay_sample(&[a.clone(), b.clone()], 10, 7, &out).unwrap(), (50, 10));
        let first = read(&out);
        assert_eq!(first.len(), 10);
        assert!(first.windows(2).all(|w| w[0] < w[1]), "input order, no repeats: {first:?}");
        assert!(first.iter().any(|&i| i >= 30), "both files are sampled from: {first:?}");
        replay_sample(&[a.clone(), b.clone()], 10, 7, &out).unwrap();
        assert_eq!(read(&out), first, "the same seed draws the same sample");
        replay_sample(&[a.clone(), b.clone()], 10, 8, &out).unwrap();
        assert_ne!(read(&out), first, "another seed another sample");
        assert_eq!(replay_sample(&[a, b], 80, 7, &out).unwrap(), (50, 50), "all when fewer");
    }
}
