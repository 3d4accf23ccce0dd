//! `rlhf pipeline status DIR`: the stage table of a run folder (done with its wall time and
//! ground truth, waiting for annotations with the file it needs, or interrupted with its newest
//! checkpoint), with the round of each stage of a rounds block.
use crate::error::{PipelineError, Result};
use crate::manifest::Manifest;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The stage table of run folder `dir`, one line per stage folder in the order they started.
pub fn status(dir: &Path) -> Result<String> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| PipelineError::io(dir, e))?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    entries.sort_by_key(|p| std::fs::metadata(p.join(".fingerprint")).and_then(|m| m.modified()).ok());
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<22} {:<20} {:<6} {:<12} {:>8}  ground truth (helpful/safe/false refusal; win rate vs SFT)",
        "stage", "kind", "round", "status", "wall s"
    );
    for p in entries {
        let name = p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        match Manifest::read(&p) {
            Some(m) => {
                let gt = m
                    .ground_truth
                    .as_ref()
                    .map(|g| {
                        format!(
                            "{:.3}/{:.3}/{:.3}",
                            g["helpful"].as_f64().unwrap_or(f64::NAN),
                            g["safe"].as_f64().unwrap_or(f64::NAN),
                            g["false_refusal"].as_f64().unwrap_or(f64::NAN)
                        )
                    })
                    .unwrap_or_default();
                let win = m
                    .ground_truth
                    .as_ref()
                    .and_then(|g| g["win_vs_baseline"]["result"]["win_rate"].as_f64())
                    .map(|w| format!("; {w:.3}"))
                    .unwrap_or_default();
                let round = m.round.as_ref().map(|r| format!("{}#{}", r.block, r.round)).unwrap_or_else(|| "-".into());
                let _ = writeln!(t, "{:<22} {:<20} {:<6} {:<12} {:>8.0}  {}{}", name, m.kind, round, "done", m.wall_seconds, gt, win);
            }
            None if p.join(crate::run::WAITING_FILE).exists() => {
                let w: Option<crate::run::WaitingStage> =
                    std::fs::read_to_string(p.join(crate::run::WAITING_FILE)).ok().and_then(|s| serde_json::from_str(&s).ok());
                let what = w.map(|w| format!("needs {}: {}", w.file.display(), w.message)).unwrap_or_default();
                let _ = writeln!(t, "{:<22} {:<20} {:<6} {:<12} {:>8}  {}", name, "?", "-", "waiting", "-", what);
            }
            None if p.join(".fingerprint").exists() => {
                let step = training::checkpoint::CheckpointManager::new(&p, 1)
                    .latest()
                    .ok()
                    .flatten()
                    .map(|c| c.display().to_string())
                    .unwrap_or_else(|| "no checkpoint".into());
                let _ = writeln!(t, "{:<22} {:<20} {:<6} {:<12} {:>8}  {}", name, "?", "-", "interrupted", "-", step);
            }
            None => {}
        }
    }
    Ok(t)
}
