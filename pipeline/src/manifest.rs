//! What a finished stage left behind (`DIR/<name>/manifest.json`). Paths inside the run folder
//! are stored relative to it (`output`, and every string of `config` and `metrics` that names a
//! path in it), so a copied or moved run folder keeps naming its own outputs; they are resolved
//! against the folder the manifest is read from.
use crate::error::{PipelineError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kind: String,
    /// Hash of the kind, the resolved config (run-folder-relative) and the inputs' fingerprints.
    pub fingerprint: String,
    /// The resolved config, paths inside the run folder relative to it.
    pub config: serde_json::Value,
    /// Fingerprint of every stage this one names.
    pub inputs: BTreeMap<String, String>,
    /// The stage's output (a model or data folder, or a file), relative to the run folder.
    pub output: PathBuf,
    /// The stage's summary, paths inside the run folder relative to it.
    pub metrics: serde_json::Value,
    pub ground_truth: Option<serde_json::Value>,
    pub wall_seconds: f64,
    /// The round of a rounds block the stage belongs to ([`crate::rounds`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<crate::config::RoundOf>,
}

pub const MANIFEST_FILE: &str = "manifest.json";

impl Manifest {
    /// The manifest of a stage folder; `None` when absent or unreadable (the stage re-runs).
    pub fn read(stage_dir: &Path) -> Option<Manifest> {
        serde_json::from_str(&std::fs::read_to_string(stage_dir.join(MANIFEST_FILE)).ok()?).ok()
    }

    pub fn write(&self, stage_dir: &Path) -> Result<()> {
        let path = stage_dir.join(MANIFEST_FILE);
        llama::checkpoint::write_atomic(&path, serde_json::to_string_pretty(self)?.as_bytes()).map_err(PipelineError::from)
    }

    /// The output in run folder `run` (an absolute output outside any run folder stays as is).
    pub fn output_in(&self, run: &Path) -> PathBuf {
        run.join(&self.output)
    }
}

/// `path` relative to `run` when it lies inside it ("." for `run` itself), else unchanged.
pub fn relative_to(path: &Path, run: &Path) -> PathBuf {
    match path.strip_prefix(run) {
        Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
        Ok(rel) => rel.to_path_buf(),
        Err(_) => path.to_path_buf(),
    }
}

/// Every string of `v` that is a path inside `run`, made relative to it.
pub fn relativize(v: &mut serde_json::Value, run: &Path) {
    match v {
        serde_json::Value::String(s) if Path::new(s.as_str()).starts_with(run) => {
            *s = relative_to(Path::new(s.as_str()), run).display().to_string();
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| relativize(x, run)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| relativize(x, run)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_run_folder_become_relative() {
        let run = Path::new("/x/run");
        let mut v = serde_json::json!({
            "model": "/x/run/sft/final", "files": ["/x/run/data/data/a.jsonl", "/x/run2/b", "/y"],
            "schedule": "cosine", "n": 3, "root": "/x/run",
        });
        relativize(&mut v, run);
        assert_eq!(
            v,
            serde_json::json!({
                "model": "sft/final", "files": ["data/data/a.jsonl", "/x/run2/b", "/y"], "schedule": "cosine", "n": 3, "root": ".",
            })
        );
        // A relative run folder (as given on the command line) works the same.
        let mut v = serde_json::json!(["runs/demo/sft/final", "runs/demo2/x", "sft"]);
        relativize(&mut v, Path::new("runs/demo"));
        assert_eq!(v, serde_json::json!(["sft/final", "runs/demo2/x", "sft"]));
    }

    #[test]
    fn output_resolves_against_the_folder_it_is_read_in() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Manifest {
            name: "sft".into(),
            kind: "sft".into(),
            fingerprint: "f".into(),
            config: serde_json::json!({}),
            inputs: BTreeMap::new(),
            output: relative_to(&tmp.path().join("run/sft/final"), &tmp.path().join("run")),
            metrics: serde_json::json!({}),
            ground_truth: None,
            wall_seconds: 1.0,
            round: None,
        };
        assert_eq!(m.output, Path::new("sft/final"));
        std::fs::create_dir_all(tmp.path().join("copy/sft")).unwrap();
        m.write(&tmp.path().join("copy/sft")).unwrap();
        let back = Manifest::read(&tmp.path().join("copy/sft")).unwrap();
        assert_eq!(back.output_in(&tmp.path().join("copy")), tmp.path().join("copy/sft/final"));
    }
}
