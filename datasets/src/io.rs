//! Streaming readers and atomic writers for JSONL and Parquet records.
//!
//! Reading never holds a whole file as Rust values: JSONL is read a line at a time; Parquet one
//! row group at a time through polars (as Arrow buffers), turned into rows [`PARQUET_SLICE_ROWS`]
//! at a time. Every row comes back with its 1-based location and either its record or a
//! [`RowError`]; nothing is dropped on the way (blank JSONL lines are not rows).
//!
//! JSONL is parsed line by line with `serde_json` rather than polars' NDJSON reader: that reader
//! infers one schema for the file (a `prompt` that is a string on one line and a message list on
//! another fails it) and fails the whole file on one bad line, where we must name the line and
//! keep going under `--skip-invalid`.
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;
use serde_json::Value;

use crate::error::{DatasetError, FieldError, Location, Reason, Result, RowError};
use crate::parse::Record;

/// Rows turned from Arrow into JSON at once when reading Parquet.
pub const PARQUET_SLICE_ROWS: usize = 4096;
/// Rows per Parquet row group when writing.
pub const ROW_GROUP_ROWS: usize = 8192;

/// A file format, from the extension (`.jsonl`, `.json`, `.ndjson`: JSON lines; `.parquet`, `.pq`)
/// or given explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Parquet,
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Format> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "json" | "ndjson" => Ok(Format::Jsonl),
            "parquet" | "pq" => Ok(Format::Parquet),
            _ => Err(DatasetError::Format {
                path: path.into(),
                msg: "unknown format: expected a .jsonl, .json or .parquet extension".into(),
            }),
        }
    }

    /// `jsonl` or `parquet`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "jsonl" | "json" => Some(Format::Jsonl),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    fn resolve(path: &Path, format: Option<Format>) -> Result<Format> {
        format.map_or_else(|| Format::from_path(path), Ok)
    }
}

/// How a row becomes a record: [`Record::from_json`], or an importer's conversion (a closure, so
/// that it can carry `--kind` and `--source`).
pub type Parser<R> = Arc<dyn Fn(&Value) -> Result<R, FieldError> + Send + Sync>;

/// One row before parsing: its location, its JSON (or why it is not JSON), and its raw text.
#[derive(Debug)]
pub struct RawRow {
    pub loc: Location,
    pub value: Result<Value, FieldError>,
    /// The JSONL line (lossy UTF-8); `None` for Parquet, whose raw form is the row as JSON.
    line: Option<String>,
}

impl RawRow {
    /// The raw row for a rejects file.
    pub fn raw(&self) -> String {
        match (&self.line, &self.value) {
            (Some(line), _) => line.clone(),
            (None, Ok(v)) => v.to_string(),
            (None, Err(_)) => String::new(),
        }
    }
}

/// The rows of one file, as JSON, in order.
pub struct RowReader {
    path: PathBuf,
    source: Source,
}

enum Source {
    Jsonl(JsonlRows),
    Parquet(ParquetRows),
}

impl RowReader {
    /// Opens `path`; for Parquet only `columns` are read (those the file has; `None`: all).
    pub fn open(path: &Path, format: Option<Format>, columns: Option<&[&str]>) -> Result<Self> {
        let source = match Format::resolve(path, format)? {
            Format::Jsonl => Source::Jsonl(JsonlRows::open(path)?),
            Format::Parquet => Source::Parquet(ParquetRows::open(path, columns)?),
        };
        Ok(RowReader { path: path.to_path_buf(), source })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next row, `None` at the end of the file.
    pub fn next_row(&mut self) -> Result<Option<RawRow>> {
        match &mut self.source {
            Source::Jsonl(s) => s.next_row(&self.path),
            Source::Parquet(s) => s.next_row(&self.path),
        }
    }
}

struct JsonlRows {
    reader: BufReader<File>,
    line: usize,
    buf: Vec<u8>,
}

impl JsonlRows {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
        Ok(JsonlRows { reader: BufReader::with_capacity(1 << 20, file), line: 0, buf: Vec::new() })
    }

    fn next_row(&mut self, path: &Path) -> Result<Option<RawRow>> {
        loop {
            self.buf.clear();
            if self.reader.read_until(b'\n', &mut self.buf).map_err(|e| DatasetError::io(path, e))? == 0 {
                return Ok(None);
            }
            self.line += 1;
            let mut bytes = self.buf.as_slice();
            if self.line == 1 {
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(parse_line(Location::Line(self.line), bytes)));
        }
    }
}

/// A JSONL line as JSON, or why it is not.
fn parse_line(loc: Location, bytes: &[u8]) -> RawRow {
    let bytes = bytes.trim_ascii_end();
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let detail = format!("invalid UTF-8 at byte {}", e.valid_up_to());
            let value = Err(FieldError::new("", Reason::InvalidUtf8, detail));
            return RawRow { loc, value, line: Some(String::from_utf8_lossy(bytes).into_owned()) };
        }
    };
    let value = serde_json::from_str::<Value>(text).map_err(|e| {
        // serde_json says "at line 1 column N" of the one line it saw; keep the column only.
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        FieldError::new("", Reason::InvalidJson, format!("invalid JSON at column {}: {msg}", e.column()))
    });
    RawRow { loc, value, line: Some(text.to_owned()) }
}

struct ParquetRows {
    file: File,
    metadata: polars::io::parquet::metadata::FileMetadataRef,
    /// The projected columns; empty when the file has none of them (rows are then empty objects).
    columns: Vec<String>,
    next_group: usize,
    /// Rows of the file before `next_group`.
    group_start: usize,
    /// The current row group and how many of its rows were handed out.
    current: Option<(DataFrame, usize)>,
    pending: VecDeque<Value>,
    row: usize,
}

impl ParquetRows {
    fn open(path: &Path, columns: Option<&[&str]>) -> Result<Self> {
        let perr = |e| DatasetError::polars(path, e);
        let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
        let mut reader = ParquetReader::new(file.try_clone().map_err(|e| DatasetError::io(path, e))?);
        let schema = reader.schema().map_err(perr)?;
        let columns: Vec<String> = match columns {
            Some(wanted) => wanted.iter().filter(|c| schema.contains(c)).map(|c| c.to_string()).collect(),
            None => schema.iter_names().map(|n| n.to_string()).collect(),
        };
        let metadata = reader.get_metadata().map_err(perr)?.clone();
        let pending = VecDeque::new();
        Ok(ParquetRows { file, metadata, columns, next_group: 0, group_start: 0, current: None, pending, row: 0 })
    }

    fn next_row(&mut self, path: &Path) -> Result<Option<RawRow>> {
        while self.pending.is_empty() {
            if !self.refill(path)? {
                return Ok(None);
            }
        }
        let Some(value) = self.pending.pop_front() else { return Ok(None) };
        self.row += 1;
        Ok(Some(RawRow { loc: Location::Row(self.row), value: Ok(value), line: None }))
    }

    /// Turns the next slice of rows into JSON; false at the end of the file.
    fn refill(&mut self, path: &Path) -> Result<bool> {
        let perr = |e| DatasetError::polars(path, e);
        if self.current.as_ref().is_none_or(|(df, done)| *done >= df.height()) {
            match self.read_group().map_err(perr)? {
                Some(df) => self.current = Some((df, 0)),
                None => return Ok(false),
            }
        }
        let Some((df, done)) = self.current.as_mut() else { return Ok(false) };
        let n = PARQUET_SLICE_ROWS.min(df.height() - *done);
        let rows = if self.columns.is_empty() {
            vec![Value::Object(Default::default()); n]
        } else {
            crate::parquet::frame_to_rows(&df.slice(*done as i64, n)).map_err(perr)?
        };
        *done += n;
        self.pending.extend(rows);
        Ok(true)
    }

    /// The next row group as a frame of the projected columns (an empty-width frame of the right
    /// height when no column is projected).
    fn read_group(&mut self) -> PolarsResult<Option<DataFrame>> {
        let Some(group) = self.metadata.row_groups.get(self.next_group) else { return Ok(None) };
        let n = group.num_rows();
        let start = self.group_start;
        self.next_group += 1;
        self.group_start += n;
        if self.columns.is_empty() {
            return Ok(Some(DataFrame::empty_with_height(n)));
        }
        let mut reader = ParquetReader::new(self.file.try_clone()?);
        reader.set_metadata(self.metadata.clone());
        let df = reader
            .with_columns(Some(self.columns.clone()))
            .with_slice(Some((start, n)))
            .read_parallel(ParallelStrategy::RowGroups)
            .finish()?;
        Ok(Some(df))
    }
}

/// One parsed and checked row.
#[derive(Debug)]
pub struct Row<R> {
    pub loc: Location,
    pub record: Result<R, RowError>,
}

/// Records of one file, in order: each row parsed ([`Parser`]) and checked ([`Record::check`]).
pub struct RecordReader<R> {
    rows: RowReader,
    parse: Parser<R>,
}

impl<R: Record> RecordReader<R> {
    /// Opens a file of `R` records, the format from its extension.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, None, Arc::new(R::from_json), R::COLUMNS)
    }

    /// Opens a file whose rows `parse` turns into records (importers), reading `columns` of a
    /// Parquet file.
    pub fn open_with(path: &Path, format: Option<Format>, parse: Parser<R>, columns: &[&str]) -> Result<Self> {
        Ok(RecordReader { rows: RowReader::open(path, format, Some(columns))?, parse })
    }

    pub fn path(&self) -> &Path {
        self.rows.path()
    }

    /// Up to `n` rows; empty at the end of the file.
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<Row<R>>> {
        let mut batch = Vec::with_capacity(n.min(PARQUET_SLICE_ROWS));
        while batch.len() < n {
            match self.rows.next_row()? {
                Some(raw) => batch.push(self.to_record(raw)),
                None => break,
            }
        }
        Ok(batch)
    }

    fn to_record(&self, raw: RawRow) -> Row<R> {
        let record = match &raw.value {
            Ok(v) => (self.parse)(v).and_then(|r| r.check().map(|()| r)),
            Err(e) => Err(e.clone()),
        };
        Row { loc: raw.loc, record: record.map_err(|e| RowError::new(self.rows.path(), raw.loc, e, raw.raw())) }
    }
}

impl<R: Record> Iterator for RecordReader<R> {
    type Item = Result<Row<R>>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rows.next_row() {
            Ok(Some(raw)) => Some(Ok(self.to_record(raw))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Calls `f` on batches of up to `batch_rows` rows of `path` (bad rows included, as errors).
pub fn for_each_batch<R: Record>(path: &Path, batch_rows: usize, mut f: impl FnMut(Vec<Row<R>>) -> Result<()>) -> Result<()> {
    let mut reader = RecordReader::<R>::open(path)?;
    loop {
        let batch = reader.next_batch(batch_rows.max(1))?;
        if batch.is_empty() {
            return Ok(());
        }
        f(batch)?;
    }
}

/// Every record of `path`; the first bad row is the error, and so is a file with no records
/// ([`DatasetError::Empty`], naming the file): every stage reads its data through here, and an
/// empty file would otherwise surface later as a confusing error about something else.
pub fn read_all<R: Record>(path: &Path) -> Result<Vec<R>> {
    let records: Vec<R> = RecordReader::<R>::open(path)?.map(|row| Ok(row?.record?)).collect::<Result<_>>()?;
    if records.is_empty() {
        return Err(DatasetError::Empty { path: path.into(), kind: R::KIND.as_str() });
    }
    Ok(records)
}

/// Writes records to a temporary file beside `path`, which replaces `path` only on
/// [`finish`](RecordWriter::finish): a failed run never leaves a half-written dataset.
pub struct RecordWriter<R: Record> {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
    sink: Sink,
    pending: Vec<R>,
    written: usize,
}

enum Sink {
    Jsonl(BufWriter<File>),
    Parquet(Option<Box<polars::io::parquet::write::BatchedWriter<File>>>),
}

impl<R: Record> RecordWriter<R> {
    /// The format from the extension unless given.
    pub fn create(path: &Path, format: Option<Format>) -> Result<Self> {
        let format = Format::resolve(path, format)?;
        let io = |e| DatasetError::io(path, e);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = tempfile::Builder::new().prefix(".rlhf-").suffix(".tmp").tempfile_in(dir).map_err(io)?;
        let file = tmp.reopen().map_err(io)?;
        let sink = match format {
            Format::Jsonl => Sink::Jsonl(BufWriter::with_capacity(1 << 20, file)),
            Format::Parquet => Sink::Parquet(None),
        };
        Ok(RecordWriter { path: path.into(), tmp, sink, pending: Vec::new(), written: 0 })
    }

    pub fn write(&mut self, record: R) -> Result<()> {
        match &mut self.sink {
            Sink::Jsonl(w) => write_line(w, &record.to_json()).map_err(|e| DatasetError::io(&self.path, e))?,
            Sink::Parquet(_) => {
                self.pending.push(record);
                if self.pending.len() >= ROW_GROUP_ROWS {
                    self.flush_group()?;
                }
            }
        }
        self.written += 1;
        Ok(())
    }

    /// Writes a slice of records (for Parquet, straight into row groups, without copies).
    pub fn write_batch(&mut self, records: &[R]) -> Result<()> {
        if let Sink::Jsonl(_) = self.sink {
            return records.iter().try_for_each(|r| self.write(r.clone()));
        }
        self.flush_group()?;
        for chunk in records.chunks(ROW_GROUP_ROWS) {
            self.write_group(chunk)?;
        }
        self.written += records.len();
        Ok(())
    }

    fn flush_group(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        self.write_group(&rows)
    }

    fn write_group(&mut self, rows: &[R]) -> Result<()> {
        let perr = |e| DatasetError::polars(&self.path, e);
        let mut df = R::to_frame(rows).map_err(perr)?;
        df.rechunk_mut();
        let Sink::Parquet(writer) = &mut self.sink else { return Ok(()) };
        if writer.is_none() {
            let file = self.tmp.reopen().map_err(|e| DatasetError::io(&self.path, e))?;
            *writer = Some(Box::new(ParquetWriter::new(file).batched(df.schema()).map_err(perr)?));
        }
        let Some(w) = writer.as_mut() else { return Ok(()) };
        w.write_batch(&df).map_err(perr)
    }

    /// Completes the file and moves it to its path; returns the number of records.
    pub fn finish(mut self) -> Result<usize> {
        let path = self.path.clone();
        let io = |e| DatasetError::io(&path, e);
        match &mut self.sink {
            Sink::Jsonl(w) => w.flush().map_err(io)?,
            Sink::Parquet(_) => {
                self.flush_group()?;
                if matches!(self.sink, Sink::Parquet(None)) {
                    self.write_group(&[])?; // an empty file still carries the schema
                }
                if let Sink::Parquet(Some(w)) = &self.sink {
                    w.finish().map_err(|e| DatasetError::polars(&path, e))?;
                }
            }
        }
        self.tmp.as_file().sync_all().map_err(io)?;
        // A dataset is not a secret: the usual mode, not the temp file's 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io)?;
        }
        self.tmp.persist(&path).map_err(|e| DatasetError::io(&path, e.error))?;
        Ok(self.written)
    }
}

fn write_line(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")
}

/// Writes `records` to `path` (format from the extension), atomically.
pub fn write_all<R: Record>(path: &Path, records: &[R]) -> Result<usize> {
    let mut w = RecordWriter::<R>::create(path, None)?;
    w.write_batch(records)?;
    w.finish()
}

/// A JSON-lines side file (the rejects file), created (truncated) up front so that it always
/// describes the latest run.
pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
    pub lines: usize,
}

impl JsonLines {
    pub fn create(path: PathBuf) -> Result<Self> {
        let out = BufWriter::new(File::create(&path).map_err(|e| DatasetError::io(&path, e))?);
        Ok(JsonLines { path, out, lines: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, v: &Value) -> Result<()> {
        write_line(&mut self.out, v).map_err(|e| DatasetError::io(&self.path, e))?;
        self.lines += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.out.flush().map_err(|e| DatasetError::io(&self.path, e))
    }
}
