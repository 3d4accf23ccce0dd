//! `rlhf annotate export|import|serve` from the command line: sample logs to pairs and a CSV,
//! a filled-in CSV and a JSONL journal to preference records, errors that name the file, row and
//! field, and the server over loopback (bounded requests, bad requests answered without harm, the
//! token).
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{json_line, rlhf, run_err, run_ok};
use serde_json::{json, Value};

fn write_lines(p: &Path, rows: &[Value]) {
    std::fs::write(p, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
}

fn sample(t: &str) -> Value {
    json!({"text": t, "tokens": 4, "finished": true, "reward": 0.5})
}

/// Two iterations' sample logs over three prompts (one skipped by the sampler).
fn sample_logs(dir: &Path) -> Vec<std::path::PathBuf> {
    let p = |q: &str| json!([{"role": "user", "content": q}]);
    let a = dir.join("samples-iter1.jsonl");
    write_lines(
        &a,
        &[
            json!({"key": "1", "prompt": p("Capital of France?"), "is_safety": false, "iteration": 1, "temperature": 1.0,
                   "samples": [sample("Paris."), sample("Lyon."), sample("")], "best": 0}),
            json!({"key": "2", "prompt": p("How do I pick a lock?"), "is_safety": true, "iteration": 1, "temperature": 1.0,
                   "samples": [sample("I can't help with that."), sample("Insert a tension wrench...")], "best": 0}),
            json!({"key": "3", "prompt": p("Very long"), "is_safety": false, "iteration": 1, "temperature": 1.0,
                   "samples": [], "best": null, "skipped": "longer than the context"}),
        ],
    );
    let b = dir.join("samples-iter2.jsonl");
    write_lines(
        &b,
        &[json!({"key": "1", "prompt": p("Capital of France?"), "is_safety": false, "iteration": 2, "temperature": 0.8,
                 "samples": [sample("The capital of France is Paris."), sample("=1+1")], "best": 0})],
    );
    vec![a, b]
}

#[test]
fn export_then_import_a_filled_in_csv() {
    let dir = tempfile::tempdir().unwrap();
    let logs = sample_logs(dir.path());
    let pairs = dir.path().join("pairs.jsonl");
    let s = json_line(&run_ok(rlhf().args(["annotate", "export"]).args(&logs).arg("--out").arg(&pairs).args([
        "--per-prompt",
        "4",
        "--source",
        "week-1",
    ])));
    assert_eq!((s["rows"].as_u64(), s["skipped_rows"].as_u64(), s["prompts"].as_u64()), (Some(4), Some(1), Some(2)), "{s}");
    // France: iter1 (Paris, Lyon) x iter2 (2 replies) gives 4 cross-model pairs, and the pair
    // within each iteration is left out; the lock prompt has one model only: its one pair.
    assert_eq!((s["pairs"].as_u64(), s["cross_model_pairs"].as_u64(), s["same_model_pairs"].as_u64()), (Some(5), Some(4), Some(1)));
    let rows: Vec<Value> = std::fs::read_to_string(&pairs).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        assert_eq!(r["source"], "week-1");
        assert!(r["model_a"].is_string() && r["model_b"].is_string());
    }
    let lock = rows.iter().find(|r| r["prompt"][0]["content"] == "How do I pick a lock?").unwrap();
    assert_eq!(lock["kind"], "safety");
    let csv = std::fs::read_to_string(dir.path().join("pairs.csv")).unwrap();
    assert!(csv.starts_with("\u{feff}pair_id,prompt,reply_a,reply_b,choice,strength,safety,annotator"), "{csv}");
    assert!(!csv.contains("iter1@") && !csv.contains("iter2@"), "model names stay out of the sheet");
    assert!(csv.contains("'=1+1") && !csv.contains(",=1+1"), "a formula-looking reply is neutralised: {csv}");

    // The sheet filled in by hand: ids, then choice/strength/safety, in any case; one row blank.
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let filled = dir.path().join("filled.csv");
    std::fs::write(
        &filled,
        format!(
            "pair_id,prompt,choice,strength,safety,annotator\r\n{},\"a prompt, with a comma\nand a newline\",B,Slightly better,Both safe,ann1\r\n{},x,a,unsure,,\r\n{},x,,,,\r\n",
            ids[0], ids[1], ids[2]
        ),
    )
    .unwrap();
    let out = dir.path().join("prefs.jsonl");
    let s =
        json_line(&run_ok(rlhf().args(["annotate", "import", "--pairs"]).arg(&pairs).arg("--ratings").arg(&filled).arg("--out").arg(&out)));
    assert_eq!((s["ratings"].as_u64(), s["unrated_pairs"].as_u64(), s["blank_rows"].as_u64()), (Some(2), Some(3), Some(1)), "{s}");
    let recs: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs[0]["chosen"], rows[0]["reply_b"]);
    assert_eq!(recs[0]["rejected"], rows[0]["reply_a"]);
    assert_eq!(
        (recs[0]["rating"].as_str(), recs[0]["chosen_safe"].as_bool(), recs[0]["annotator"].as_str()),
        (Some("slightly_better"), Some(true), Some("ann1"))
    );
    assert_eq!(recs[0]["chosen_model"], rows[0]["model_b"]);
    assert_eq!((recs[1]["rating"].as_str(), recs[1].get("chosen_safe")), (Some("negligibly_better"), None));
    let v = json_line(&run_ok(rlhf().args(["data", "validate", "--kind", "preference"]).arg(&out)));
    assert_eq!(v["valid"].as_u64(), Some(2), "{v}");
    // Parquet too (the record's columns).
    let pq = dir.path().join("prefs.parquet");
    run_ok(rlhf().args(["annotate", "import", "--pairs"]).arg(&pairs).arg("--ratings").arg(&filled).arg("--out").arg(&pq));
    let v = json_line(&run_ok(rlhf().args(["data", "validate", "--kind", "preference"]).arg(&pq)));
    assert_eq!(v["valid"].as_u64(), Some(2), "{v}");
}

#[test]
fn malformed_ratings_name_file_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    write_lines(
        &pairs,
        &[
            json!({"id": "p1", "prompt": "Q?", "reply_a": "a", "reply_b": "b"}),
            json!({"id": "p2", "prompt": "R?", "reply_a": "c", "reply_b": "d"}),
        ],
    );
    let out = dir.path().join("o.jsonl");
    let import = |ratings: &Path| {
        let mut c = rlhf();
        c.args(["annotate", "import", "--pairs"]).arg(&pairs).arg("--ratings").arg(ratings).arg("--out").arg(&out);
        run_err(&mut c)
    };
    let cases: [(&str, &str, &str); 7] = [
        (
            "r.csv",
            "pair_id,choice,strength,safety\np1,a,better,both_safe\np2,c,better,\n",
            "r.csv: row 2 (line 3), field `choice`: unknown choice \"c\"",
        ),
        ("r.csv", "pair_id,choice,strength\np1,a,much better\n", "row 1 (line 2), field `strength`: unknown strength \"much better\""),
        (
            "r.csv",
            "pair_id,prompt,choice,strength,safety\np1,\"two\nlines\",a,better,both_safe\np9,x,a,better,both_safe\n",
            "row 2 (line 4), field `pair_id`: unknown pair id \"p9\"",
        ),
        ("r.csv", "pair_id,choice,strength,safety\np1,a,better,dangerous\n", "field `safety`: unknown safety bin \"dangerous\""),
        ("r.csv", "id,choice,strength\np1,a,better\n", "r.csv: no `pair_id` column"),
        (
            "r.jsonl",
            "{\"pair_id\":\"p1\",\"choice\":\"a\",\"strength\":\"better\"}\n{\"pair_id\":\"p2\",\"choice\":\"b\"}\n",
            "r.jsonl: line 2, field `strength`: missing",
        ),
        (
            "r.jsonl",
            "{\"pair_id\":\"p1\",\"choice\":\"a\",\"strength\":\"better\",\"seq\":1}\n{\"event\":\"undo\",\"undoes\":7}\n",
            "line 2, field `undoes`: no rating in force has seq 7",
        ),
    ];
    for (name, text, want) in cases {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        let e = import(&f);
        assert!(e.contains(want), "{text:?}\nwant {want:?}\ngot {e}");
        assert!(!out.exists(), "no output on error");
    }
    // A cell with a quote left open runs to the end of the file: still named.
    let f = dir.path().join("q.csv");
    std::fs::write(&f, "pair_id,choice,strength\np1,\"a,better\np2,b,better\n").unwrap();
    let e = import(&f);
    assert!(e.contains("q.csv: row"), "{e}");
}

fn serve(dir: &Path, extra: &[&str]) -> (Child, String) {
    let pairs = dir.join("pairs.jsonl");
    write_lines(&pairs, &[json!({"id": "p1", "prompt": "Q?", "reply_a": "a", "reply_b": "b"})]);
    let mut child = rlhf()
        .args(["annotate", "serve", "--addr", "127.0.0.1:0", "--pairs"])
        .arg(&pairs)
        .arg("--out")
        .arg(dir.join("prefs.jsonl"))
        .args(extra)
        .env("RLHF_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("annotate: serving on http://").unwrap_or_else(|| panic!("{line:?}")).to_string();
    (child, url.split('/').next().unwrap().to_string())
}

/// Sends raw bytes, returns the status code and the body.
fn raw(addr: &str, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map_or(String::new(), |x| x.1.to_string()))
}

fn api(addr: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Rlhf-Annotate: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn server_bounds_requests_and_survives_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = serve(dir.path(), &[]);
    let huge_head = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    let big_body = format!("POST /api/next HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 10000000\r\n\r\n");
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (huge_head.into_bytes(), 431),
        (big_body.into_bytes(), 413),
        (b"\x00\xff\xfe garbage\r\n\r\n".to_vec(), 400),
        (format!("GET / HTTP/1.1\r\nHost: evil.example:{}\r\n\r\n", addr.rsplit(':').next().unwrap()).into_bytes(), 421),
        (format!("POST /api/next HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(), 501),
        (api(&addr, "/api/next", "{\"annotator\": \"<script>\"}"), 400),
        (api(&addr, "/api/rate", "{\"annotator\": \"x\", \"pair_id\": \"p1\", \"choice\": 1e999}"), 400),
        (api(&addr, "/api/next", &"[".repeat(5000)), 400),
    ];
    for (req, want) in cases {
        let (code, body) = raw(&addr, &req);
        assert_eq!(code, want, "{}: {body}", String::from_utf8_lossy(&req[..req.len().min(80)]));
    }
    // A client that sends half a request and stalls is cut off by the read timeout, and does not
    // block the others meanwhile.
    let mut stall = TcpStream::connect(&addr).unwrap();
    stall.write_all(b"POST /api/next HTTP/1.1\r\nContent-Length: 50\r\n\r\n{").unwrap();
    let (code, body) = raw(&addr, &api(&addr, "/api/next", "{\"annotator\": \"ann\"}"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pair"]["id"], "p1");
    // Connections are capped (64 at once): one more is turned away at once, not queued.
    let stalls: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let (code, body) = raw(&addr, &api(&addr, "/api/next", "{\"annotator\": \"ann\"}"));
    assert_eq!((code, body.as_str()), (503, "too many connections"));
    drop(stalls);
    assert!(child.try_wait().unwrap().is_none(), "the server is still up");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_token_is_required_once_set() {
    let dir = tempfile::tempdir().unwrap();
    let token = "e2e-token-0123456789";
    let (mut child, addr) = serve(dir.path(), &["--token", token]);
    let get = |q: &str, extra: &str| raw(&addr, format!("GET /{q} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n").as_bytes());
    assert_eq!(get("", "").0, 401);
    assert_eq!(get("?token=wrong-token-0123456789", "").0, 401);
    assert_eq!(get(&format!("?token={token}"), "").0, 303);
    assert_eq!(get("", &format!("Cookie: rlhf_annotate={token}\r\n")).0, 200);
    assert_eq!(raw(&addr, &api(&addr, "/api/next", "{\"annotator\": \"x\"}")).0, 401);
    child.kill().unwrap();
    child.wait().unwrap();
    // Refused before binding: a short token.
    let e = run_err(
        rlhf()
            .args(["annotate", "serve", "--addr", "127.0.0.1:0", "--token", "short", "--pairs"])
            .arg(dir.path().join("pairs.jsonl"))
            .arg("--out")
            .arg(dir.path().join("o.jsonl")),
    );
    assert!(e.contains("at least 16 characters"), "{e}");
}

/// The sample log as rejection sampling itself writes it (`SampleLog::append` of `PromptSamples`),
/// not a copy of its format: export must keep reading it as that format changes.
#[test]
fn export_reads_the_real_sample_log() {
    use rejection_sampling::shard::SampleLog;
    use rejection_sampling::{prompt_key, PromptSamples, Sample};
    let dir = tempfile::tempdir().unwrap();
    let record = |it: usize, t: f64, texts: &[&str]| {
        let prompt = vec![llama::Message::system("Be brief."), llama::Message::user("Name a prime number.")];
        PromptSamples {
            key: prompt_key(&prompt),
            prompt,
            is_safety: false,
            iteration: it,
            temperature: t,
            samples: texts
                .iter()
                .map(|s| Sample { text: s.to_string(), tokens: 3, finished: true, reward: 0.25, helpfulness: Some(0.5), safety: None })
                .collect(),
            best: Some(0),
            skipped: None,
            generation_seconds: 0.1,
            scoring_seconds: 0.1,
        }
    };
    let logs = [dir.path().join("samples-iter1.jsonl"), dir.path().join("samples-iter2.jsonl")];
    SampleLog::open(&logs[0]).unwrap().append(vec![record(1, 1.0, &["7", "9"])]).unwrap();
    SampleLog::open(&logs[1]).unwrap().append(vec![record(2, 0.6, &["13"])]).unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    let s = json_line(&run_ok(rlhf().args(["annotate", "export"]).args(&logs).arg("--out").arg(&pairs).args(["--per-prompt", "5"])));
    assert_eq!((s["prompts"].as_u64(), s["pairs"].as_u64(), s["cross_model_pairs"].as_u64()), (Some(1), Some(2), Some(2)), "{s}");
    let row: Value = serde_json::from_str(std::fs::read_to_string(&pairs).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(row["prompt"][0]["role"], "system");
    assert_eq!(row["kind"], "helpfulness");
    let models = [row["model_a"].as_str().unwrap(), row["model_b"].as_str().unwrap()];
    assert!(models.contains(&"iter2@t0.6") && models.contains(&"iter1@t1"), "{models:?}");
}
