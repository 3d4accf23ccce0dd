//! TensorBoard event files: `events.out.tfevents.<secs>.<host>.<pid>.<n>` in a run folder, so
//! `tensorboard --logdir runs/demo` shows every stage folder as a run.
//!
//! The format, as TensorBoard's own reader (`tensorboard.backend.event_processing`) reads it:
//! a sequence of TFRecords (`u64` length, masked CRC-32C of the length bytes, the data, masked
//! CRC-32C of the data, all little-endian), each data a protobuf `Event { wall_time = 1 double,
//! step = 2 int64, file_version = 3 string, summary = 5 Summary }`; the first event of a file
//! carries `file_version = "brain.Event:2"`. `Summary { value = 1 repeated Value }`, `Value { tag
//! = 1, simple_value = 2 float, tensor = 8 TensorProto, metadata = 9 SummaryMetadata }`. A scalar
//! is a `simple_value`; a text summary is a `DT_STRING` scalar tensor (`TensorProto { dtype = 1,
//! string_val = 8 }`) with `metadata.plugin_data.plugin_name = "text"`.
//!
//! Written by hand rather than with a crate: the Rust crate for this format (`tensorboard-rs`
//! 0.5.9, last released 2022 and marked inactive by its author) brings protobuf 2 generated code,
//! panics on I/O errors, has no text summaries and no reader. The subset written here is four
//! messages; encoding and decoding them is shorter than the glue around a dependency, and the
//! decoder is what resume needs (the kept events are read back) and what the tests check against
//! (lengths, CRCs, fields), besides TensorBoard's own reader (`tools/check_tensorboard.py`).
//! CRC-32C is a 256-entry table (checked against the RFC 3720 check value), so no new crate
//! enters the lock file.
//!
//! Resume: [`EventWriter::open`] with `keep_through = Some(step)` reads every event file of the
//! folder, keeps the events of steps `<= step` (once per tag and step, the last written), writes
//! them into a fresh file (a temp file renamed into place) and removes the old files, so a resumed
//! run never shows a step twice. Without it, old event files are removed (a fresh run).
use crate::error::{Result, TrainError};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// `Event.file_version` of the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";
/// `DataType.DT_STRING` of TensorFlow's `types.proto`.
const DT_STRING: u64 = 7;
/// What marks an event file: TensorBoard reads files whose name contains it.
const MARKER: &str = "tfevents";

/// An error reading an event file.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: record at byte {offset}: {msg}")]
    Corrupt { path: PathBuf, offset: u64, msg: String },
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord framing uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC: rotated right by 15 bits plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// One TFRecord around `data`.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// What one summary value holds.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueData {
    /// `simple_value`.
    Scalar(f32),
    /// A text-plugin string tensor (markdown).
    Text(String),
    /// A value of another kind, kept as its encoded `Value` message.
    Other(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub tag: String,
    pub data: ValueData,
}

impl Value {
    pub fn scalar(tag: impl Into<String>, v: f64) -> Self {
        Value { tag: tag.into(), data: ValueData::Scalar(v as f32) }
    }
    pub fn text(tag: impl Into<String>, text: impl Into<String>) -> Self {
        Value { tag: tag.into(), data: ValueData::Text(text.into()) }
    }
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    pub values: Vec<Value>,
}

// --- protobuf encoding (the few wire types used) ---

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn encode_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match &v.data {
        ValueData::Other(raw) => return raw.clone(),
        ValueData::Scalar(x) => {
            put_bytes(&mut out, 1, v.tag.as_bytes());
            put_key(&mut out, 2, 5);
            out.extend_from_slice(&x.to_le_bytes());
        }
        ValueData::Text(text) => {
            put_bytes(&mut out, 1, v.tag.as_bytes());
            // TensorProto { dtype: DT_STRING, tensor_shape: {} (a scalar), string_val: [text] }
            let mut tensor = Vec::new();
            put_key(&mut tensor, 1, 0);
            put_varint(&mut tensor, DT_STRING);
            put_bytes(&mut tensor, 2, &[]);
            put_bytes(&mut tensor, 8, text.as_bytes());
            put_bytes(&mut out, 8, &tensor);
            // SummaryMetadata { plugin_data: PluginData { plugin_name: "text" } }
            let mut plugin = Vec::new();
            put_bytes(&mut plugin, 1, b"text");
            let mut meta = Vec::new();
            put_bytes(&mut meta, 1, &plugin);
            put_bytes(&mut out, 9, &meta);
        }
    }
    out
}

/// The protobuf bytes of `e`.
pub fn encode_event(e: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    put_key(&mut out, 1, 1);
    out.extend_from_slice(&e.wall_time.to_le_bytes());
    if e.step != 0 {
        put_key(&mut out, 2, 0);
        put_varint(&mut out, e.step as u64);
    }
    if let Some(v) = &e.file_version {
        put_bytes(&mut out, 3, v.as_bytes());
    }
    if !e.values.is_empty() {
        let mut summary = Vec::new();
        for v in &e.values {
            put_bytes(&mut summary, 1, &encode_value(v));
        }
        put_bytes(&mut out, 5, &summary);
    }
    out
}

// --- protobuf decoding ---

enum Wire<'a> {
    Varint(u64),
    I64([u8; 8]),
    Bytes(&'a [u8]),
    I32([u8; 4]),
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> std::result::Result<Vec<(u32, Wire<'_>)>, String> {
    fn varint(buf: &[u8], pos: &mut usize) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*pos).ok_or("varint runs past the end")?;
            *pos += 1;
            v |= ((b & 0x7F) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = pos.checked_add(n).filter(|&e| e <= buf.len()).ok_or("field runs past the end")?;
        let s = &buf[*pos..end];
        *pos = end;
        Ok(s)
    }
    let (mut pos, mut out) = (0usize, Vec::new());
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let field = (key >> 3) as u32;
        let wire = match key & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 => Wire::I64(take(buf, &mut pos, 8)?.try_into().expect("8 bytes")),
            2 => {
                let n = varint(buf, &mut pos)? as usize;
                Wire::Bytes(take(buf, &mut pos, n)?)
            }
            5 => Wire::I32(take(buf, &mut pos, 4)?.try_into().expect("4 bytes")),
            w => return Err(format!("field {field}: unsupported wire type {w}")),
        };
        out.push((field, wire));
    }
    Ok(out)
}

fn utf8(b: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|e| format!("invalid UTF-8: {e}"))
}

fn decode_value(buf: &[u8]) -> std::result::Result<Value, String> {
    let (mut tag, mut simple, mut strings, mut dtype, mut plugin) = (String::new(), None, Vec::new(), None, None);
    for (f, w) in fields(buf)? {
        match (f, w) {
            (1, Wire::Bytes(b)) => tag = utf8(b)?,
            (2, Wire::I32(b)) => simple = Some(f32::from_le_bytes(b)),
            (8, Wire::Bytes(t)) => {
                for (tf, tw) in fields(t)? {
                    match (tf, tw) {
                        (1, Wire::Varint(d)) => dtype = Some(d),
                        (8, Wire::Bytes(s)) => strings.push(utf8(s)?),
                        _ => {}
                    }
                }
            }
            (9, Wire::Bytes(m)) => {
                for (mf, mw) in fields(m)? {
                    if let (1, Wire::Bytes(pd)) = (mf, mw) {
                        for (pf, pw) in fields(pd)? {
                            if let (1, Wire::Bytes(name)) = (pf, pw) {
                                plugin = Some(utf8(name)?);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let data = match (simple, plugin.as_deref(), dtype, strings.len()) {
        (Some(x), _, _, _) => ValueData::Scalar(x),
        (None, Some("text"), Some(DT_STRING), 1) => ValueData::Text(strings.remove(0)),
        _ => ValueData::Other(buf.to_vec()),
    };
    Ok(Value { tag, data })
}

/// Decodes the protobuf bytes of an event.
pub fn decode_event(buf: &[u8]) -> std::result::Result<Event, String> {
    let mut e = Event { wall_time: 0.0, step: 0, file_version: None, values: Vec::new() };
    for (f, w) in fields(buf)? {
        match (f, w) {
            (1, Wire::I64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Wire::Varint(s)) => e.step = s as i64,
            (3, Wire::Bytes(b)) => e.file_version = Some(utf8(b)?),
            (5, Wire::Bytes(s)) => {
                for (sf, sw) in fields(s)? {
                    if let (1, Wire::Bytes(v)) = (sf, sw) {
                        e.values.push(decode_value(v)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

/// The events of `bytes` up to the first damaged record, and the damage (a record cut short by a
/// crash, a CRC mismatch, an undecodable event), as TensorBoard's reader also stops there.
fn parse_records(bytes: &[u8], path: &Path) -> (Vec<Event>, Option<EventError>) {
    let (mut events, mut pos) = (Vec::new(), 0usize);
    let corrupt = |offset: usize, msg: String| Some(EventError::Corrupt { path: path.to_path_buf(), offset: offset as u64, msg });
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + 12) else {
            return (events, corrupt(pos, format!("cut short: {} header bytes of 12", bytes.len() - pos)));
        };
        let len_bytes = &head[..8];
        if u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) != masked_crc32c(len_bytes) {
            return (events, corrupt(pos, "length CRC mismatch".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let end = usize::try_from(len).ok().and_then(|l| (pos + 12).checked_add(l)).and_then(|e| e.checked_add(4));
        let Some(end) = end.filter(|&e| e <= bytes.len()) else {
            return (events, corrupt(pos, format!("cut short: {len} data bytes announced, {} left", bytes.len() - pos - 12)));
        };
        let data = &bytes[pos + 12..end - 4];
        if u32::from_le_bytes(bytes[end - 4..end].try_into().expect("4 bytes")) != masked_crc32c(data) {
            return (events, corrupt(pos, "data CRC mismatch".into()));
        }
        match decode_event(data) {
            Ok(e) => events.push(e),
            Err(msg) => return (events, corrupt(pos, msg)),
        }
        pos = end;
    }
    (events, None)
}

/// Every event of the file at `path`; any damaged record is an error (lengths, both CRCs and the
/// protobuf are checked).
pub fn read_events(path: &Path) -> std::result::Result<Vec<Event>, EventError> {
    let bytes = std::fs::read(path).map_err(|source| EventError::Io { path: path.to_path_buf(), source })?;
    match parse_records(&bytes, path) {
        (events, None) => Ok(events),
        (_, Some(e)) => Err(e),
    }
}

/// The event files of `dir` (names containing `tfevents`), in name order.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(dir, e)),
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(MARKER) && e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// A TensorBoard tag from a metrics key: characters other than `[A-Za-z0-9_./-]` become `_`.
pub fn tag(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "_./-".contains(c) { c } else { '_' }).collect()
}

/// The numbers of a metrics record as scalars `<prefix>/<key>` (nested objects as
/// `<prefix>/<key>/<field>`, arrays by index); `step`, strings, booleans and nulls are left out.
pub fn scalars_of(prefix: &str, record: &serde_json::Value) -> Vec<Value> {
    fn walk(name: String, v: &serde_json::Value, out: &mut Vec<Value>) {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.push(Value::scalar(tag(&name), x));
                }
            }
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| walk(format!("{name}/{k}"), v, out)),
            serde_json::Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| walk(format!("{name}/{i}"), v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(m) = record.as_object() {
        for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "step") {
            walk(format!("{prefix}/{k}"), v, &mut out);
        }
    }
    out
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A fresh event file name: `events.out.tfevents.<secs>.<host>.<pid>.<n>` (n counts the files
/// this process opened, so two in one second differ).
fn file_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let host: String = crate::lock::host_name().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("events.out.{MARKER}.{:010}.{host}.{}.{}", now() as u64, std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The events of steps `<= keep_through` of the files `old`, once per (tag, step) (the last
/// written wins: files left by a resume interrupted between its rename and its removals), in step
/// order. A damaged tail is dropped with a warning.
fn kept_events(old: &[PathBuf], keep_through: u64) -> Result<Vec<Event>> {
    let mut all = Vec::new();
    for f in old {
        let bytes = std::fs::read(f).map_err(|e| TrainError::io(f, e))?;
        let (events, damage) = parse_records(&bytes, f);
        if let Some(d) = damage {
            tracing::warn!("tensorboard: {d}; the events after it are dropped");
        }
        all.extend(events.into_iter().filter(|e| e.file_version.is_none() && e.step >= 0 && e.step as u64 <= keep_through));
    }
    let mut seen = HashSet::new();
    let mut out: Vec<Event> = all
        .into_iter()
        .rev()
        .filter_map(|mut e| {
            e.values.retain(|v| seen.insert((v.tag.clone(), e.step)));
            (!e.values.is_empty()).then_some(e)
        })
        .collect();
    out.reverse();
    out.sort_by_key(|e| e.step);
    Ok(out)
}

/// Appends events to one event file of a run folder (see the module docs).
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
    last_step: Option<u64>,
}

impl EventWriter {
    /// Opens a fresh event file in `dir` (created if missing). With `keep_through = Some(step)`
    /// (a resume from `step`), the events of steps `<= step` of the folder's event files are
    /// carried into it; in every case the folder's other event files are removed afterwards.
    pub fn open(dir: &Path, keep_through: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let old = event_files(dir)?;
        let kept = match keep_through {
            Some(s) => kept_events(&old, s)?,
            None => Vec::new(),
        };
        let last_step = kept.iter().map(|e| e.step as u64).max();
        let first = Event { wall_time: now(), step: 0, file_version: Some(FILE_VERSION.into()), values: Vec::new() };
        let mut bytes = frame(&encode_event(&first));
        for e in &kept {
            bytes.extend(frame(&encode_event(e)));
        }
        let path = dir.join(file_name());
        // The temp name has no `tfevents` (TensorBoard ignores it) and the runner's `.tmp-<pid>`
        // suffix (a crash leaves nothing the next run keeps).
        let tmp = dir.join(format!(".events.tmp-{}", std::process::id()));
        let written = File::create(&tmp).and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()));
        written.map_err(|e| TrainError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))?;
        for f in old.iter().filter(|f| **f != path) {
            std::fs::remove_file(f).map_err(|e| TrainError::io(f, e))?;
        }
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| TrainError::io(&path, e))?;
        Ok(EventWriter { path, out: BufWriter::new(file), last_step })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest step in the file (`None` when it has no summary yet).
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }

    /// Writes `values` as one event of `step` (now) and flushes it to the file, so a TensorBoard
    /// watching the folder sees it at once. Nothing is written for no values.
    pub fn write(&mut self, step: u64, values: Vec<Value>) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let e = Event { wall_time: now(), step: step as i64, file_version: None, values };
        self.out.write_all(&frame(&encode_event(&e))).map_err(|e| TrainError::io(&self.path, e))?;
        self.out.flush().map_err(|e| TrainError::io(&self.path, e))?;
        self.last_step = Some(self.last_step.map_or(step, |s| s.max(step)));
        Ok(())
    }

    /// Scalars `(tag, value)` of `step`.
    pub fn scalars<'a>(&mut self, step: u64, values: impl IntoIterator<Item = (&'a str, f64)>) -> Result<()> {
        self.write(step, values.into_iter().map(|(t, v)| Value::scalar(t, v)).collect())
    }

    /// A text summary (markdown) of `step`.
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        self.write(step, vec![Value::text(tag, text)])
    }

    /// Flushes and fsyncs the file (at every checkpoint).
    pub fn sync(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| TrainError::io(&self.path, e))?;
        self.out.get_ref().sync_data().map_err(|e| TrainError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_3720_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_scalar_event_has_the_hand_encoded_bytes() {
        // Event { wall_time: 1.5, step: 3, summary { value { tag: "a", simple_value: 2.0 } } }
        let e = Event { wall_time: 1.5, step: 3, file_version: None, values: vec![Value::scalar("a", 2.0)] };
        let mut want = vec![0x09];
        want.extend(1.5f64.to_le_bytes());
        want.extend([0x10, 3, 0x2A, 10, 0x0A, 8, 0x0A, 1, b'a', 0x15]);
        want.extend(2.0f32.to_le_bytes());
        assert_eq!(encode_event(&e), want);
        let framed = frame(&want);
        assert_eq!(&framed[..8], &(want.len() as u64).to_le_bytes());
        assert_eq!(framed.len(), want.len() + 16);
        assert_eq!(decode_event(&want).unwrap(), e);
    }

    #[test]
    fn a_damaged_record_is_reported_and_the_events_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tfevents");
        let ev = |s| encode_event(&Event { wall_time: 1.0, step: s, file_version: None, values: vec![Value::scalar("t", s as f64)] });
        let mut bytes = [frame(&ev(1)), frame(&ev(2))].concat();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_events(&path).unwrap().len(), 2);
        let n = bytes.len();
        bytes[n - 6] ^= 1; // a data byte of the second record
        let (events, damage) = parse_records(&bytes, &path);
        assert_eq!(events.len(), 1);
        assert!(matches!(damage, Some(EventError::Corrupt { ref msg, .. }) if msg.contains("data CRC")), "{damage:?}");
        let cut = &[frame(&ev(1)), frame(&ev(2))[..20].to_vec()].concat();
        let (events, damage) = parse_records(cut, &path);
        assert_eq!(events.len(), 1);
        assert!(damage.unwrap().to_string().contains("cut short"));
    }

    #[test]
    fn scalars_of_a_record_flatten_numbers_and_skip_the_rest() {
        let rec = serde_json::json!({"step": 4, "loss": 0.5, "eval": {"acc": 1}, "bins": [0.25], "name": "x", "gc": true, "kl": null});
        let mut tags: Vec<(String, ValueData)> = scalars_of("sft", &rec).into_iter().map(|v| (v.tag, v.data)).collect();
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            tags,
            [
                ("sft/bins/0".into(), ValueData::Scalar(0.25)),
                ("sft/eval/acc".into(), ValueData::Scalar(1.0)),
                ("sft/loss".into(), ValueData::Scalar(0.5))
            ]
        );
        assert_eq!(tag("a b/c:d"), "a_b/c_d");
    }
}
