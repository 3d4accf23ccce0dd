//! Preference records with reward-model scores (`rlhf reward score`): the canonical record plus
//! `chosen_score` and `rejected_score` columns, as JSONL or Parquet, written atomically.
use crate::error::{DatasetError, Result};
use crate::io::Format;
use crate::parse::Record;
use crate::PreferenceRecord;
use polars::prelude::*;
use std::io::Write;
use std::path::Path;

pub fn write_scored_pairs(path: &Path, records: &[PreferenceRecord], chosen: &[f64], rejected: &[f64]) -> Result<usize> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DatasetError::io(path, e))?;
    let tmp = tempfile::Builder::new().prefix(".rlhf-").suffix(".tmp").tempfile_in(dir).map_err(|e| DatasetError::io(path, e))?;
    let mut file = tmp.reopen().map_err(|e| DatasetError::io(path, e))?;
    match Format::from_path(path)? {
        Format::Jsonl => {
            let mut w = std::io::BufWriter::new(&mut file);
            for ((r, c), j) in records.iter().zip(chosen).zip(rejected) {
                let mut v = r.to_json();
                v["chosen_score"] = serde_json::json!(c);
                v["rejected_score"] = serde_json::json!(j);
                serde_json::to_writer(&mut w, &v).map_err(|e| DatasetError::io(path, e.into()))?;
                w.write_all(b"\n").map_err(|e| DatasetError::io(path, e))?;
            }
            w.flush().map_err(|e| DatasetError::io(path, e))?;
        }
        Format::Parquet => {
            let perr = |e| DatasetError::polars(path, e);
            let mut df = PreferenceRecord::to_frame(records).map_err(perr)?;
            df.with_column(Column::new("chosen_score".into(), chosen)).map_err(perr)?;
            df.with_column(Column::new("rejected_score".into(), rejected)).map_err(perr)?;
            ParquetWriter::new(&mut file).finish(&mut df).map_err(perr)?;
        }
    }
    file.sync_all().map_err(|e| DatasetError::io(path, e))?;
    tmp.persist(path).map_err(|e| DatasetError::io(path, e.error))?;
    Ok(records.len())
}
