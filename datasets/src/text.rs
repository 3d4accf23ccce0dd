//! Plain text rows `{"text": ...}` (JSONL), the input of `rlhf eval lm`.
use crate::error::{DatasetError, Result};
use std::io::BufRead;
use std::path::Path;

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads `{"text": ...}` rows (blank lines skipped); errors name the file, the line and the field.
pub fn read_text_rows(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).map_err(|e| DatasetError::io(path, e))?;
    let bad = |msg: String| DatasetError::Format { path: path.to_path_buf(), msg };
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let line_no = i + 1;
        let bytes = line.map_err(|e| DatasetError::io(path, e))?;
        let line = String::from_utf8(bytes).map_err(|e| bad(format!("line {line_no}: invalid UTF-8 ({e})")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(format!("line {line_no}: invalid JSON ({e})")))?;
        match v.get("text") {
            Some(serde_json::Value::String(s)) => rows.push(s.clone()),
            Some(other) => return Err(bad(format!("line {line_no}: field \"text\" must be a string, found {}", json_type(other)))),
            None => return Err(bad(format!("line {line_no}: missing field \"text\""))),
        }
    }
    Ok(rows)
}
