//! The two ways this crate writes: whole files atomically (a temp file beside the target,
//! fsynced, renamed over it, the folder fsynced), and JSON lines appended and fsynced one at a
//! time (the ratings journal, the server's output between undos).
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::Value;

use crate::error::{AnnotateError, Result};

/// The folder of `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or a new file in `dir` durable. Some file systems refuse to fsync a folder;
/// that is no worse than not asking, so the error is ignored.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `path` atomically: a crash leaves either the old file or the whole new one.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let io = |e| AnnotateError::io(path, e);
    let dir = parent_dir(path);
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write(&mut w).map_err(io)?;
        w.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    // Data, not a secret: the usual mode, not the temp file's 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| AnnotateError::io(path, e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Writes JSON values as lines, atomically.
pub fn write_jsonl_atomic<'a>(path: &Path, rows: impl IntoIterator<Item = &'a Value>) -> Result<()> {
    write_atomic(path, |w| {
        for v in rows {
            serde_json::to_writer(&mut *w, v)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// A JSON-lines file appended to one durable line at a time.
pub struct AppendLog {
    path: std::path::PathBuf,
    file: File,
}

impl AppendLog {
    /// Opens `path` for appending, creating it (and making its name durable) when missing.
    pub fn open(path: &Path) -> Result<Self> {
        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| AnnotateError::io(path, e))?;
        if !existed {
            sync_dir(parent_dir(path));
        }
        Ok(AppendLog { path: path.to_path_buf(), file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and returns once it is on disk (`fdatasync`): what the caller
    /// acknowledges after this survives a crash or `kill -9`.
    pub fn append(&mut self, v: &Value) -> Result<()> {
        let mut line = serde_json::to_vec(v).map_err(|e| AnnotateError::io(&self.path, e.into()))?;
        line.push(b'\n');
        // One write of the whole line: a crash leaves at most a torn last line, which readers of a
        // journal drop (it was never acknowledged).
        self.file.write_all(&line).map_err(|e| AnnotateError::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| AnnotateError::io(&self.path, e))
    }
}

/// The lines of a JSONL file with their 1-based numbers, blank lines left out. A last line
/// without its newline is returned as `torn` instead (a write a crash cut short).
pub struct JsonlLines {
    pub lines: Vec<(usize, String)>,
    pub torn: Option<(usize, Vec<u8>)>,
    /// Bytes up to the end of the last complete line.
    pub complete_len: u64,
}

/// Reads `path` as JSON lines (see [`JsonlLines`]); invalid UTF-8 is an error naming the line.
pub fn read_lines(path: &Path) -> Result<JsonlLines> {
    let bytes = std::fs::read(path).map_err(|e| AnnotateError::io(path, e))?;
    let mut lines = Vec::new();
    let mut torn = None;
    let mut complete_len = 0u64;
    let mut start = 0usize;
    let mut n = 0usize;
    while start < bytes.len() {
        n += 1;
        let end = bytes[start..].iter().position(|&b| b == b'\n').map(|i| start + i);
        let Some(end) = end else {
            torn = Some((n, bytes[start..].to_vec()));
            break;
        };
        let raw = &bytes[start..end];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw)
            .map_err(|_| AnnotateError::row(path, crate::At::Line(n), "", "invalid UTF-8 (the file must be UTF-8 JSON lines)"))?;
        if !text.trim().is_empty() {
            lines.push((n, text.to_string()));
        }
        start = end + 1;
        complete_len = start as u64;
    }
    Ok(JsonlLines { lines, torn, complete_len })
}

/// Parses one line as JSON, the error naming the file and line.
pub fn parse_line(path: &Path, n: usize, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| AnnotateError::row(path, crate::At::Line(n), "", format!("invalid JSON: {e}")))
}

impl JsonlLines {
    /// Every line, a last line without its newline included (for files written by hand or by
    /// other tools, where that is normal).
    pub fn all(mut self, path: &Path) -> Result<Vec<(usize, String)>> {
        if let Some((n, raw)) = self.torn.take() {
            let text = String::from_utf8(raw)
                .map_err(|_| AnnotateError::row(path, crate::At::Line(n), "", "invalid UTF-8 (the file must be UTF-8 JSON lines)"))?;
            if !text.trim().is_empty() {
                self.lines.push((n, text));
            }
        }
        Ok(self.lines)
    }
}
