//! `rlhf annotate serve`: the rating page and its state.
//!
//! **Durability.** Every action (rate, undo, skip) is first appended to the ratings journal and
//! fsynced, then applied, then answered: what the page was told is saved survives `kill -9`. The
//! output file of preference records is derived from the journal: a rating appends its record
//! (fsynced), an undo rewrites the file atomically, and a start rewrites it from the journal, so
//! it always equals `rlhf annotate import --pairs PAIRS --ratings JOURNAL`. A journal's last line
//! cut short by a crash was never acknowledged and is dropped on start.
//!
//! **Assignment.** Each annotator (a name typed on the page) holds one pair at a time, leased for
//! `lease`; a pair is offered while its ratings plus the live leases of others are fewer than
//! `overlap`, so several annotators at once get different pairs, and with `--overlap N` each pair
//! is rated by N different annotators (the agreement statistics of `rlhf annotate import`).
//! Skipped pairs come back to the same annotator only when nothing else is left. Undo withdraws
//! the annotator's last rating (repeatedly, through the whole history) and shows that pair again.
//!
//! **Exposure.** The page binds 127.0.0.1 unless told otherwise; any other address needs a token
//! (`Authorization: Bearer`, or `?token=` once, which sets an HttpOnly SameSite=Strict cookie).
//! On loopback the Host header must name the loopback address (DNS rebinding), and every API call
//! must carry `X-Rlhf-Annotate: 1` with a JSON body (a cross-site form or `fetch` cannot, without a
//! CORS preflight this server never grants). All text reaches the page as JSON data shown with
//! `textContent`, under a CSP without inline script.
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::error::{AnnotateError, At, Result};
use crate::fsio::{read_lines, AppendLog};
use crate::http::{Limits, Request, Response};
use crate::merge::{merge, write_records, Annotated};
use crate::pairs::{read_pairs, PairRecord};
use crate::ratings::{event_from_json, parse_strength, Event, RatingLog, RatingRow, SafetyBin, Side};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");
const FAVICON_SVG: &str = include_str!("page/favicon.svg");

/// The cookie that carries the token after `?token=`.
pub const TOKEN_COOKIE: &str = "rlhf_annotate";
/// The header every API call carries (a cross-site request cannot set it without a preflight).
pub const API_HEADER: &str = "x-rlhf-annotate";
/// Shortest token accepted: 16 characters (`openssl rand -hex 16` gives 32).
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest annotator name.
pub const MAX_NAME_LEN: usize = 64;

/// Everything `rlhf annotate serve` takes.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub pairs: PathBuf,
    /// Preference records (JSONL), derived from the journal.
    pub out: PathBuf,
    /// The ratings journal (the source of truth; see [`default_journal`]).
    pub journal: PathBuf,
    pub addr: SocketAddr,
    /// Ratings per pair, by different annotators.
    pub overlap: usize,
    pub token: Option<String>,
    /// Draws the order in which each annotator sees a pair's two replies.
    pub seed: u64,
    /// How long a pair shown to an annotator is kept from the others.
    pub lease: Duration,
}

/// `DIR/NAME.ratings.jsonl` beside `DIR/NAME.jsonl`.
pub fn default_journal(out: &Path) -> PathBuf {
    let stem = out.file_stem().map_or_else(|| "annotations".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}.ratings.jsonl"))
}

/// An address other than loopback needs a token of at least [`MIN_TOKEN_LEN`] characters.
pub fn check_exposure(addr: &SocketAddr, token: Option<&str>) -> Result<()> {
    match token {
        Some(t) if t.len() < MIN_TOKEN_LEN || !t.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c)) => {
            Err(AnnotateError::Config(format!(
                "the token must be at least {MIN_TOKEN_LEN} characters of A-Z, a-z, 0-9, '-', '_', '.', '~' (e.g. `openssl rand -hex 16`)"
            )))
        }
        None if !addr.ip().is_loopback() => Err(AnnotateError::Config(format!(
            "{addr} is not a loopback address: anyone who can reach it could read the pairs and write ratings; \
             give --token TOKEN (or RLHF_ANNOTATE_TOKEN) and share the printed address, or bind 127.0.0.1"
        ))),
        _ => Ok(()),
    }
}

/// An API error: the status and what the page shows.
#[derive(Debug)]
struct ApiError(u16, String);

fn api(status: u16, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into())
}

#[derive(Debug, Default)]
struct Annotator {
    /// Ratings in force, oldest first: `(seq, pair)`, what undo walks back.
    stack: Vec<(u64, usize)>,
    /// Pairs passed on, in order (offered again last).
    skipped: Vec<usize>,
    /// The pair on the annotator's screen and when it was leased.
    current: Option<(usize, Instant)>,
}

/// The server's state, behind one lock: every action is short (one fsynced line).
struct State {
    pairs: Vec<PairRecord>,
    index: HashMap<String, usize>,
    overlap: usize,
    seed: u64,
    lease: Duration,
    log: RatingLog,
    /// Ratings in force per pair.
    counts: Vec<usize>,
    annotators: BTreeMap<String, Annotator>,
    next_seq: u64,
    journal: AppendLog,
    out_path: PathBuf,
    /// `None` after a failed write: the next action rewrites the file whole.
    out: Option<AppendLog>,
}

impl State {
    fn open(o: &ServeOptions) -> Result<State> {
        if !matches!(datasets::Format::from_path(&o.out), Ok(datasets::Format::Jsonl)) {
            return Err(AnnotateError::Config(format!("--out {}: the server appends JSON lines: give a .jsonl file", o.out.display())));
        }
        if o.overlap == 0 {
            return Err(AnnotateError::Config("--overlap must be at least 1".into()));
        }
        let pairs = read_pairs(&o.pairs)?;
        let index = pairs.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
        let events = if o.journal.exists() { read_journal(&o.journal)? } else { Vec::new() };
        let mut s = State {
            counts: vec![0; pairs.len()],
            pairs,
            index,
            overlap: o.overlap,
            seed: o.seed,
            lease: o.lease,
            log: RatingLog::default(),
            annotators: BTreeMap::new(),
            next_seq: 1,
            journal: AppendLog::open(&o.journal)?,
            out_path: o.out.clone(),
            out: None,
        };
        for (n, e) in events {
            s.next_seq = s.next_seq.max(e.seq().unwrap_or(0) + 1);
            s.replay(e).map_err(|d| AnnotateError::row(&o.journal, At::Line(n), d.0, d.1))?;
        }
        s.rewrite_out()?;
        Ok(s)
    }

    /// Applies a journal event read back on start, checking what the live server checks.
    fn replay(&mut self, e: Event) -> std::result::Result<(), (&'static str, String)> {
        let who = match &e {
            Event::Rate { rating, .. } => rating.annotator.clone(),
            Event::Undo { annotator, .. } | Event::Skip { annotator, .. } => annotator.clone(),
        };
        let who = who.ok_or(("annotator", "missing: a journal line names its annotator".to_string()))?;
        if e.seq().is_none() {
            return Err(("seq", "missing: a journal line is numbered".into()));
        }
        match &e {
            Event::Rate { rating, .. } => {
                self.pair_index(&rating.pair_id).ok_or(("pair_id", format!("unknown pair {:?}: another pair file?", rating.pair_id)))?;
                if self.log.get(&rating.pair_id, &who).is_some() {
                    return Err(("pair_id", format!("{who} rated {:?} twice without an undo", rating.pair_id)));
                }
            }
            Event::Skip { pair_id, .. } => {
                self.pair_index(pair_id).ok_or(("pair_id", format!("unknown pair {pair_id:?}: another pair file?")))?;
            }
            Event::Undo { undoes, .. } => {
                let last = self.annotators.get(&who).and_then(|a| a.stack.last()).map(|x| x.0);
                if last != Some(*undoes) {
                    return Err(("undoes", format!("{who}'s last rating in force is not seq {undoes}")));
                }
            }
        }
        self.apply(e, &who).map_err(|d| ("seq", d))
    }

    fn pair_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Applies a checked event to the state (the journal already holds it).
    fn apply(&mut self, e: Event, who: &str) -> std::result::Result<(), String> {
        enum Effect {
            Rated(u64, usize),
            Skipped(usize),
            Undone(u64),
        }
        let unknown = || "unknown pair".to_string();
        let effect = match &e {
            Event::Rate { seq, rating } => Effect::Rated(seq.unwrap_or(0), self.pair_index(&rating.pair_id).ok_or_else(unknown)?),
            Event::Skip { pair_id, .. } => Effect::Skipped(self.pair_index(pair_id).ok_or_else(unknown)?),
            Event::Undo { undoes, .. } => Effect::Undone(*undoes),
        };
        self.log.apply(e).map_err(|i| i.detail)?;
        let a = self.annotators.entry(who.to_string()).or_default();
        match effect {
            Effect::Rated(seq, p) => {
                a.skipped.retain(|&q| q != p);
                a.stack.push((seq, p));
                self.counts[p] += 1;
            }
            Effect::Skipped(p) => {
                a.skipped.retain(|&q| q != p);
                a.skipped.push(p);
            }
            Effect::Undone(u) => {
                if let Some(i) = a.stack.iter().rposition(|x| x.0 == u) {
                    let (_, p) = a.stack.remove(i);
                    self.counts[p] -= 1;
                }
            }
        }
        Ok(())
    }

    /// The output file, whole, from the ratings in force; then appends go to the new file.
    fn rewrite_out(&mut self) -> Result<()> {
        self.out = None;
        let (records, _) = merge(&self.pairs, &self.log)?;
        write_records(&self.out_path, &records)?;
        self.out = Some(AppendLog::open(&self.out_path)?);
        Ok(())
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// Appends an event to the journal (durably) and applies it.
    fn commit(&mut self, e: Event, who: &str, shown_first: Option<Side>) -> std::result::Result<(), ApiError> {
        self.journal
            .append(&e.to_json(unix_now(), shown_first))
            .map_err(|err| api(500, format!("not saved: the ratings journal could not be written: {err}")))?;
        self.apply(e, who).map_err(|d| api(500, format!("journal and state disagree (a bug): {d}")))
    }

    /// Which of the pair's replies `who` sees first: drawn per (seed, pair, annotator), the same
    /// after a reload or a restart.
    fn shown_first(&self, p: usize, who: &str) -> Side {
        let mut h = blake3::Hasher::new();
        h.update(&self.seed.to_le_bytes());
        h.update(self.pairs[p].id.as_bytes());
        h.update(&[0]);
        h.update(who.as_bytes());
        if h.finalize().as_bytes()[0] & 1 == 0 {
            Side::A
        } else {
            Side::B
        }
    }

    fn rated_by(&self, p: usize, who: &str) -> bool {
        self.log.get(&self.pairs[p].id, who).is_some()
    }

    /// Others holding a live lease on `p`.
    fn holders(&self, p: usize, except: &str, now: Instant) -> usize {
        self.annotators
            .iter()
            .filter(|(n, a)| n.as_str() != except && a.current.is_some_and(|(q, t)| q == p && now.duration_since(t) < self.lease))
            .count()
    }

    fn open_for(&self, p: usize, who: &str, now: Instant) -> bool {
        self.counts[p] + self.holders(p, who, now) < self.overlap && !self.rated_by(p, who)
    }

    /// The pair to show `who` now (leased to them), if any: the one on their screen, else the
    /// first open pair they have not skipped, else the pairs they skipped, oldest skip first.
    fn next_for(&mut self, who: &str) -> Option<usize> {
        let now = Instant::now();
        let a = self.annotators.get(who);
        let current = a.and_then(|a| a.current).map(|x| x.0);
        let skipped: &[usize] = a.map_or(&[], |a| &a.skipped);
        let pick = current
            .filter(|&p| self.open_for(p, who, now))
            .or_else(|| (0..self.pairs.len()).find(|&p| !skipped.contains(&p) && self.open_for(p, who, now)))
            .or_else(|| skipped.iter().copied().find(|&p| self.open_for(p, who, now)));
        self.annotators.entry(who.to_string()).or_default().current = pick.map(|p| (p, now));
        pick
    }

    /// The page's view: the pair on screen (replies in the annotator's order, no model names),
    /// progress, and whether undo can act.
    fn view(&self, who: &str, pair: Option<usize>, notice: Option<&str>) -> Value {
        let done = self.counts.iter().filter(|&&c| c >= self.overlap).count();
        let total = self.pairs.len();
        let mine = self.annotators.get(who).map_or(0, |a| a.stack.len());
        let message = match pair {
            Some(_) => None,
            None if done == total => Some("Every pair is rated. Thank you!".to_string()),
            None => Some(format!(
                "Nothing left for you now: the {} pairs left are with other annotators{}. Check back later.",
                total - done,
                if self.overlap > 1 { " or already rated by you" } else { "" }
            )),
        };
        let pair = pair.map(|p| {
            let first = self.shown_first(p, who);
            let text = |s: Side| if s == Side::A { &self.pairs[p].reply_a } else { &self.pairs[p].reply_b };
            json!({
                "id": self.pairs[p].id,
                "prompt": self.pairs[p].prompt,
                "responses": [text(first), text(first.other())],
                "skipped_before": self.annotators.get(who).is_some_and(|a| a.skipped.contains(&p)),
            })
        });
        json!({
            "annotator": who,
            "pair": pair,
            "progress": {"done": done, "left": total - done, "total": total, "you": mine, "overlap": self.overlap},
            "can_undo": mine > 0,
            "notice": notice,
            "message": message,
        })
    }

    fn act_next(&mut self, who: &str) -> Value {
        let p = self.next_for(who);
        self.view(who, p, None)
    }

    fn act_rate(&mut self, who: &str, body: &Value) -> std::result::Result<Value, ApiError> {
        let p = self.body_pair(body)?;
        if self.rated_by(p, who) {
            return Err(api(409, "you already rated this pair; undo to change the rating"));
        }
        let first = self.shown_first(p, who);
        let choice = match body.get("choice").and_then(Value::as_u64) {
            Some(1) => first,
            Some(2) => first.other(),
            _ => return Err(api(400, "choice must be 1 or 2 (the reply shown first or second)")),
        };
        let strength = body
            .get("strength")
            .and_then(Value::as_str)
            .and_then(parse_strength)
            .ok_or_else(|| api(400, "strength must be significantly_better, better, slightly_better or negligibly_better (unsure)"))?;
        let safety = body
            .get("safety")
            .and_then(Value::as_str)
            .and_then(SafetyBin::parse)
            .ok_or_else(|| api(400, "safety must be only_chosen_safe, both_safe or both_unsafe"))?;
        let rating = RatingRow { pair_id: self.pairs[p].id.clone(), choice, strength, safety: Some(safety), annotator: Some(who.into()) };
        let record = Annotated::of(&self.pairs[p], &rating).to_json();
        let seq = self.take_seq();
        self.commit(Event::Rate { seq: Some(seq), rating }, who, Some(first))?;
        self.annotators.entry(who.to_string()).or_default().current = None;
        self.append_out(&record)?;
        let next = self.next_for(who);
        Ok(self.view(who, next, Some("saved")))
    }

    fn act_skip(&mut self, who: &str, body: &Value) -> std::result::Result<Value, ApiError> {
        let p = self.body_pair(body)?;
        if self.rated_by(p, who) {
            return Err(api(409, "you already rated this pair"));
        }
        let seq = self.take_seq();
        self.commit(Event::Skip { seq: Some(seq), pair_id: self.pairs[p].id.clone(), annotator: Some(who.into()) }, who, None)?;
        self.annotators.entry(who.to_string()).or_default().current = None;
        let next = self.next_for(who);
        Ok(self.view(who, next, Some("skipped")))
    }

    fn act_undo(&mut self, who: &str) -> std::result::Result<Value, ApiError> {
        let Some(&(undoes, p)) = self.annotators.get(who).and_then(|a| a.stack.last()) else {
            return Err(api(409, "nothing to undo"));
        };
        let seq = self.take_seq();
        self.commit(Event::Undo { seq: Some(seq), undoes, annotator: Some(who.into()) }, who, None)?;
        self.rewrite_out()
            .map_err(|e| api(500, format!("the undo is saved in the journal, but the output file was not rewritten: {e}")))?;
        self.annotators.entry(who.to_string()).or_default().current = Some((p, Instant::now()));
        Ok(self.view(who, Some(p), Some("undone")))
    }

    fn body_pair(&self, body: &Value) -> std::result::Result<usize, ApiError> {
        let id = body.get("pair_id").and_then(Value::as_str).ok_or_else(|| api(400, "pair_id missing"))?;
        self.pair_index(id).ok_or_else(|| api(400, "unknown pair id"))
    }

    /// Appends a record to the output (fsynced), or rewrites the file after an earlier failure.
    fn append_out(&mut self, record: &Value) -> std::result::Result<(), ApiError> {
        let res = match self.out.as_mut() {
            Some(o) => o.append(record),
            None => self.rewrite_out(),
        };
        res.map_err(|e| {
            self.out = None;
            api(500, format!("the rating is saved in the journal, but the output file could not be written: {e}"))
        })
    }
}

/// The journal's events with their line numbers. A last line cut short by a crash (no newline)
/// was never acknowledged: it is cut off the file, with a warning.
fn read_journal(path: &Path) -> Result<Vec<(usize, Event)>> {
    let lines = read_lines(path)?;
    if let Some((n, raw)) = &lines.torn {
        tracing::warn!("{}: dropping line {n}, cut short by a crash before it was acknowledged ({} bytes)", path.display(), raw.len());
        let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| AnnotateError::io(path, e))?;
        f.set_len(lines.complete_len).and_then(|_| f.sync_all()).map_err(|e| AnnotateError::io(path, e))?;
    }
    let mut out = Vec::with_capacity(lines.lines.len());
    for (n, text) in lines.lines {
        let v = crate::fsio::parse_line(path, n, &text)?;
        out.push((n, event_from_json(&v).map_err(|i| AnnotateError::row(path, At::Line(n), i.field, i.detail))?));
    }
    Ok(out)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A JSON body with `<`, `>` and `&` escaped (`\u003c`...): harmless to JSON readers, and inert
/// should anything ever sniff it as HTML.
fn json_response(status: u16, v: &Value) -> Response {
    let s = v.to_string().replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026");
    Response::new(status, "application/json; charset=utf-8", s)
}

fn error_response(e: ApiError) -> Response {
    json_response(e.0, &json!({ "error": e.1 }))
}

/// Compares without an early exit, so that timing says nothing about how much of a guess was right.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An annotator's name as typed on the page: 1 to 64 letters, digits, spaces or `_.-@`.
pub fn check_name(name: &str) -> std::result::Result<&str, String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > MAX_NAME_LEN || !n.chars().all(|c| c.is_alphanumeric() || " _.-@".contains(c)) {
        return Err(format!("the annotator name must be 1 to {MAX_NAME_LEN} letters, digits, spaces or _ . - @"));
    }
    Ok(n)
}

/// The page and its API.
pub struct App {
    state: Mutex<State>,
    token: Option<String>,
    /// Host headers accepted (loopback binds only: DNS rebinding).
    hosts: Option<Vec<String>>,
}

impl App {
    pub fn handle(&self, req: &Request) -> Response {
        if let Some(hosts) = &self.hosts {
            if !req.header("host").is_some_and(|h| hosts.iter().any(|x| x.eq_ignore_ascii_case(h))) {
                return Response::text(421, format!("unexpected Host header: this server answers to http://{}/", hosts[0]));
            }
        }
        if let Some(token) = &self.token {
            if req.method == "GET" && req.path == "/" && req.query_param("token").is_some_and(|t| same_secret(t, token)) {
                return Response::text(303, "signed in")
                    .with_header("Location", "/")
                    .with_header("Set-Cookie", format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"));
            }
            let bearer = req.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
            if !bearer.or(req.cookie(TOKEN_COOKIE)).is_some_and(|t| same_secret(t, token)) {
                return Response::text(401, "this server needs its token: open the address it printed (http://HOST:PORT/?token=...)");
            }
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => Response::new(200, "text/html; charset=utf-8", INDEX_HTML),
            ("GET", "/app.js") => Response::new(200, "text/javascript; charset=utf-8", APP_JS),
            ("GET", "/style.css") => Response::new(200, "text/css; charset=utf-8", STYLE_CSS),
            ("GET", "/favicon.svg" | "/favicon.ico") => Response::new(200, "image/svg+xml", FAVICON_SVG),
            ("POST", path) if path.starts_with("/api/") => self.api(req).unwrap_or_else(error_response),
            (_, "/" | "/app.js" | "/style.css" | "/favicon.svg" | "/favicon.ico") => {
                Response::text(405, "method not allowed").with_header("Allow", "GET")
            }
            _ => Response::text(404, "not found"),
        }
    }

    fn api(&self, req: &Request) -> std::result::Result<Response, ApiError> {
        if req.header(API_HEADER) != Some("1") {
            return Err(api(403, "API calls carry the X-Rlhf-Annotate: 1 header"));
        }
        if let (Some(origin), Some(host)) = (req.header("origin"), req.header("host")) {
            if !origin.eq_ignore_ascii_case(&format!("http://{host}")) {
                return Err(api(403, "cross-origin request refused"));
            }
        }
        if !req.header("content-type").is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("application/json")) {
            return Err(api(415, "API calls send a JSON body (Content-Type: application/json)"));
        }
        let body: Value = serde_json::from_slice(&req.body).map_err(|e| api(400, format!("invalid JSON body: {e}")))?;
        let who = check_name(body.get("annotator").and_then(Value::as_str).unwrap_or("")).map_err(|e| api(400, e))?.to_string();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let v = match req.path.as_str() {
            "/api/next" => s.act_next(&who),
            "/api/rate" => s.act_rate(&who, &body)?,
            "/api/skip" => s.act_skip(&who, &body)?,
            "/api/undo" => s.act_undo(&who)?,
            _ => return Err(api(404, "no such API call")),
        };
        Ok(json_response(200, &v))
    }
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    addr: SocketAddr,
    limits: Limits,
}

impl Server {
    /// Checks the options, restores the state from the journal (rewriting the output file), and
    /// binds the address.
    pub fn bind(o: &ServeOptions) -> Result<Server> {
        check_exposure(&o.addr, o.token.as_deref())?;
        let state = State::open(o)?;
        let listener = TcpListener::bind(o.addr).map_err(|e| AnnotateError::Config(format!("cannot listen on {}: {e}", o.addr)))?;
        let addr = listener.local_addr().map_err(|e| AnnotateError::Config(format!("cannot listen on {}: {e}", o.addr)))?;
        let hosts = addr.ip().is_loopback().then(|| {
            let p = addr.port();
            vec![format!("{addr}"), format!("localhost:{p}"), format!("127.0.0.1:{p}"), format!("[::1]:{p}")]
        });
        let app = App { state: Mutex::new(state), token: o.token.clone(), hosts };
        Ok(Server { listener, app: Arc::new(app), addr, limits: Limits::default() })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `serve` found on start: pairs, ratings in force, pairs done.
    pub fn progress(&self) -> (usize, usize, usize) {
        let s = self.app.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.pairs.len(), s.log.len(), s.counts.iter().filter(|&&c| c >= s.overlap).count())
    }

    /// Serves until the process is stopped (everything acknowledged is already on disk).
    pub fn run(self) -> Result<()> {
        let app = self.app.clone();
        crate::http::serve(self.listener, self.limits, Arc::new(move |r: &Request| app.handle(r)))
            .map_err(|e| AnnotateError::Config(format!("server stopped: {e}")))
    }

    /// The app, for tests that call it without sockets.
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }
}

#[cfg(test)]
mod tests;
