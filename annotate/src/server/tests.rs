//! The server's logic through `App::handle`, without sockets (tests/annotate_*.rs drive the
//! binary over loopback and in a browser).
use super::*;
use crate::pairs::write_pairs;
use crate::ratings::read_ratings;
use llama_text::chat::Message;
use std::collections::HashSet;
use std::io::Write;

const HOST: &str = "127.0.0.1:9";

struct Fixture {
    dir: tempfile::TempDir,
    opts: ServeOptions,
}

fn fixture(n: usize, overlap: usize, token: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<PairRecord> = (0..n)
        .map(|i| PairRecord {
            id: format!("p{i}"),
            prompt: vec![Message::user(format!("question {i}"))],
            reply_a: format!("answer A{i} <script>alert(1)</script>"),
            reply_b: format!("answer B{i}"),
            model_a: Some("secret-model-a".into()),
            model_b: Some("secret-model-b".into()),
            kind: None,
            source: None,
        })
        .collect();
    write_pairs(&dir.path().join("pairs.jsonl"), &pairs).unwrap();
    let out = dir.path().join("prefs.jsonl");
    let opts = ServeOptions {
        pairs: dir.path().join("pairs.jsonl"),
        journal: default_journal(&out),
        out,
        addr: "127.0.0.1:0".parse().unwrap(),
        overlap,
        token: token.map(String::from),
        seed: 0,
        lease: Duration::from_secs(600),
    };
    Fixture { dir, opts }
}

fn app(o: &ServeOptions) -> App {
    App { state: Mutex::new(State::open(o).unwrap()), token: o.token.clone(), hosts: Some(vec![HOST.into()]) }
}

fn post(path: &str, body: Value) -> Request {
    Request {
        method: "POST".into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("host".into(), HOST.into()), (API_HEADER.into(), "1".into()), ("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn call(a: &App, path: &str, body: Value) -> (u16, Value) {
    let r = a.handle(&post(path, body));
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

fn ok(a: &App, path: &str, body: Value) -> Value {
    let (s, v) = call(a, path, body);
    assert_eq!(s, 200, "{path}: {v}");
    v
}

fn pair_id(v: &Value) -> Option<String> {
    v["pair"]["id"].as_str().map(String::from)
}

fn rate(a: &App, who: &str, id: &str, choice: u64) -> Value {
    ok(a, "/api/rate", json!({"annotator": who, "pair_id": id, "choice": choice, "strength": "better", "safety": "both_safe"}))
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn annotators_get_different_pairs_and_each_pair_is_rated_once() {
    let f = fixture(3, 1, None);
    let a = app(&f.opts);
    let x = ok(&a, "/api/next", json!({"annotator": "x"}));
    let y = ok(&a, "/api/next", json!({"annotator": "y"}));
    let z = ok(&a, "/api/next", json!({"annotator": "z"}));
    let ids: Vec<String> = [&x, &y, &z].iter().map(|v| pair_id(v).unwrap()).collect();
    assert_eq!(ids, ["p0", "p1", "p2"]);
    // A fourth finds nothing free; asking again keeps one's own pair.
    let w = ok(&a, "/api/next", json!({"annotator": "w"}));
    assert!(w["pair"].is_null() && w["message"].as_str().unwrap().contains("other annotators"), "{w}");
    assert_eq!(pair_id(&ok(&a, "/api/next", json!({"annotator": "x"}))).unwrap(), "p0");
    rate(&a, "x", "p0", 1);
    rate(&a, "y", "p1", 2);
    let v = rate(&a, "z", "p2", 1);
    assert!(v["pair"].is_null());
    assert_eq!(v["progress"], json!({"done": 3, "left": 0, "total": 3, "you": 1, "overlap": 1}));
    assert_eq!(lines(&f.opts.out).len(), 3);
}

#[test]
fn overlap_gives_each_pair_to_n_different_annotators() {
    let f = fixture(2, 2, None);
    let a = app(&f.opts);
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for who in ["x", "y", "z"] {
        let mut v = ok(&a, "/api/next", json!({"annotator": who}));
        while let Some(id) = pair_id(&v) {
            seen.entry(id.clone()).or_default().push(who.into());
            v = rate(&a, who, &id, 1);
        }
    }
    assert_eq!(seen["p0"], ["x", "y"]);
    assert_eq!(seen["p1"], ["x", "y"]);
    // Both annotators chose the reply they saw first: agreement depends on the drawn orders.
    let (log, _) = read_ratings(&f.opts.journal, &|_| true).unwrap();
    let (_, summary) = merge(&read_pairs(&f.opts.pairs).unwrap(), &log).unwrap();
    assert_eq!((summary.ratings, summary.agreement.pairs, summary.agreement.annotator_pairs), (4, 2, 2));
}

#[test]
fn choice_maps_through_the_shown_order_and_model_names_stay_hidden() {
    let f = fixture(1, 8, None);
    let a = app(&f.opts);
    let mut firsts = HashSet::new();
    for i in 0..8 {
        let who = format!("ann{i}");
        let v = ok(&a, "/api/next", json!({"annotator": who}));
        let body = serde_json::to_string(&v).unwrap();
        assert!(!body.contains("secret-model"), "{body}");
        let first = v["pair"]["responses"][0].as_str().unwrap().to_string();
        firsts.insert(first.clone());
        rate(&a, &who, "p0", 1);
        let rec = lines(&f.opts.out).pop().unwrap();
        assert_eq!(rec["chosen"].as_str().unwrap(), first, "choice 1 is the reply shown first");
        assert_eq!(rec["annotator"], who.as_str());
    }
    assert_eq!(firsts.len(), 2, "both orders are shown");
}

#[test]
fn undo_skip_and_restart_from_the_journal() {
    let f = fixture(4, 1, None);
    let a = app(&f.opts);
    let v = ok(&a, "/api/next", json!({"annotator": "x"}));
    assert_eq!(pair_id(&v).unwrap(), "p0");
    let v = ok(&a, "/api/skip", json!({"annotator": "x", "pair_id": "p0"}));
    assert_eq!((pair_id(&v).unwrap().as_str(), v["notice"].as_str()), ("p1", Some("skipped")));
    rate(&a, "x", "p1", 1);
    let v = rate(&a, "x", "p2", 2);
    assert_eq!(pair_id(&v).unwrap(), "p3");
    // Undo twice walks back p2 then p1, each shown again.
    let v = ok(&a, "/api/undo", json!({"annotator": "x"}));
    assert_eq!((pair_id(&v).unwrap().as_str(), v["notice"].as_str()), ("p2", Some("undone")));
    assert_eq!(lines(&f.opts.out).len(), 1);
    let (s, e) = call(&a, "/api/undo", json!({"annotator": "y"}));
    assert_eq!((s, e["error"].as_str()), (409, Some("nothing to undo")));
    rate(&a, "x", "p2", 1);
    let (s, _) =
        call(&a, "/api/rate", json!({"annotator": "x", "pair_id": "p2", "choice": 1, "strength": "better", "safety": "both_safe"}));
    assert_eq!(s, 409);
    drop(a);

    // Restart: a torn last journal line (a crash mid-write) is dropped; the state comes back.
    let journal_before = std::fs::read(&f.opts.journal).unwrap();
    std::fs::OpenOptions::new().append(true).open(&f.opts.journal).unwrap().write_all(b"{\"event\":\"rate\",\"se").unwrap();
    std::fs::write(&f.opts.out, "garbage that the restart replaces\n").unwrap();
    let a = app(&f.opts);
    assert_eq!(std::fs::read(&f.opts.journal).unwrap(), journal_before);
    let v = ok(&a, "/api/next", json!({"annotator": "x"}));
    assert_eq!(pair_id(&v).unwrap(), "p3", "p0 was skipped: it comes last");
    assert_eq!(v["progress"]["you"], 2);
    let v = rate(&a, "x", "p3", 1);
    assert_eq!((pair_id(&v).unwrap().as_str(), v["pair"]["skipped_before"].as_bool()), ("p0", Some(true)));
    let v = ok(&a, "/api/undo", json!({"annotator": "x"}));
    assert_eq!(pair_id(&v).unwrap(), "p3");
    rate(&a, "x", "p3", 2);
    let v = rate(&a, "x", "p0", 2);
    assert_eq!(v["progress"]["left"], 0);

    // The output equals what import makes of the journal.
    let pairs = read_pairs(&f.opts.pairs).unwrap();
    let ids: HashSet<String> = pairs.iter().map(|p| p.id.clone()).collect();
    let (log, _) = read_ratings(&f.opts.journal, &|id| ids.contains(id)).unwrap();
    let (records, _) = merge(&pairs, &log).unwrap();
    assert_eq!(lines(&f.opts.out), records.iter().map(Annotated::to_json).collect::<Vec<_>>());
    assert_eq!(records.iter().map(|r| r.pair_id.as_str()).collect::<Vec<_>>(), ["p1", "p2", "p3", "p0"]);
    for r in &records {
        datasets::validate::check_preference(&r.record).unwrap();
    }
}

#[test]
fn a_journal_from_another_pair_file_is_refused() {
    let f = fixture(2, 1, None);
    std::fs::write(
        &f.opts.journal,
        "{\"event\":\"rate\",\"seq\":1,\"pair_id\":\"zz\",\"choice\":\"a\",\"strength\":\"better\",\"annotator\":\"x\"}\n",
    )
    .unwrap();
    let e = State::open(&f.opts).err().unwrap().to_string();
    assert!(e.contains("prefs.ratings.jsonl: line 1, field `pair_id`: unknown pair \"zz\""), "{e}");
    let _ = &f.dir;
}

#[test]
fn requests_that_break_the_rules_are_refused() {
    let f = fixture(1, 1, None);
    let a = app(&f.opts);
    let good = json!({"annotator": "x"});
    let status = |r: Request| a.handle(&r).status;
    let mut r = post("/api/next", good.clone());
    r.headers.retain(|(k, _)| k != API_HEADER);
    assert_eq!(status(r), 403);
    let mut r = post("/api/next", good.clone());
    r.headers.push(("origin".into(), "http://evil.example".into()));
    assert_eq!(status(r), 403);
    let mut r = post("/api/next", good.clone());
    r.headers.retain(|(k, _)| k != "host");
    r.headers.push(("host".into(), "evil.example:9".into()));
    assert_eq!(status(r), 421);
    let mut r = post("/api/next", good.clone());
    r.headers.retain(|(k, _)| k != "content-type");
    r.headers.push(("content-type".into(), "text/plain".into()));
    assert_eq!(status(r), 415);
    let mut r = post("/api/next", good.clone());
    r.body = b"{not json".to_vec();
    assert_eq!(status(r), 400);
    for name in ["", "a/b", "<b>", &"n".repeat(65)] {
        assert_eq!(call(&a, "/api/next", json!({"annotator": name})).0, 400, "{name:?}");
    }
    let bad = [
        json!({"annotator": "x", "pair_id": "nope", "choice": 1, "strength": "better", "safety": "both_safe"}),
        json!({"annotator": "x", "pair_id": "p0", "choice": 3, "strength": "better", "safety": "both_safe"}),
        json!({"annotator": "x", "pair_id": "p0", "choice": 1, "strength": "best", "safety": "both_safe"}),
        json!({"annotator": "x", "pair_id": "p0", "choice": 1, "strength": "better"}),
        json!({"annotator": "x", "pair_id": ["p0"], "choice": 1, "strength": "better", "safety": "both_safe"}),
    ];
    for b in bad {
        assert_eq!(call(&a, "/api/rate", b.clone()).0, 400, "{b}");
    }
    assert!(!f.opts.journal.exists() || std::fs::read_to_string(&f.opts.journal).unwrap().is_empty());
    assert_eq!(call(&a, "/api/drop_tables", good).0, 404);
    let get = |path: &str| Request {
        method: "GET".into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("host".into(), HOST.into())],
        body: vec![],
    };
    assert_eq!(status(get("/")), 200);
    assert_eq!(status(get("/../../etc/passwd")), 404);
    assert_eq!(status(Request { method: "DELETE".into(), ..get("/") }), 405);
}

#[test]
fn pair_text_is_escaped_in_the_json() {
    let f = fixture(1, 1, None);
    let a = app(&f.opts);
    let r = a.handle(&post("/api/next", json!({"annotator": "x"})));
    let body = String::from_utf8(r.body).unwrap();
    assert!(!body.contains('<') && body.contains("\\u003cscript\\u003e"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["pair"]["responses"].as_array().unwrap().iter().any(|t| t.as_str().unwrap().contains("<script>alert(1)</script>")));
}

#[test]
fn a_token_guards_everything() {
    let token = "0123456789abcdef0123";
    let f = fixture(1, 1, Some(token));
    let a = app(&f.opts);
    let get = |query: &str, headers: Vec<(String, String)>| {
        let mut h = vec![("host".to_string(), HOST.to_string())];
        h.extend(headers);
        a.handle(&Request { method: "GET".into(), path: "/".into(), query: query.into(), headers: h, body: vec![] })
    };
    assert_eq!(get("", vec![]).status, 401);
    assert_eq!(get("token=0123456789abcdef0124", vec![]).status, 401);
    let r = get(&format!("token={token}"), vec![]);
    assert_eq!(r.status, 303);
    let cookie = r.headers.iter().find(|(k, _)| *k == "Set-Cookie").unwrap().1.clone();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    assert_eq!(get("", vec![("cookie".into(), pair.clone())]).status, 200);
    assert_eq!(get("", vec![("authorization".into(), format!("Bearer {token}"))]).status, 200);
    assert_eq!(a.handle(&post("/api/next", json!({"annotator": "x"}))).status, 401);
    let mut r = post("/api/next", json!({"annotator": "x"}));
    r.headers.push(("cookie".into(), pair));
    assert_eq!(a.handle(&r).status, 200);
}

#[test]
fn exposure_needs_a_token_off_loopback() {
    let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let lo6: SocketAddr = "[::1]:8080".parse().unwrap();
    assert!(check_exposure(&lo, None).is_ok() && check_exposure(&lo6, None).is_ok());
    assert!(check_exposure(&any, None).unwrap_err().to_string().contains("--token"));
    assert!(check_exposure(&any, Some("short")).is_err());
    assert!(check_exposure(&any, Some("has spaces in the token!")).is_err());
    assert!(check_exposure(&any, Some("0123456789abcdef")).is_ok());
    assert_eq!(default_journal(Path::new("runs/prefs.jsonl")), Path::new("runs/prefs.ratings.jsonl"));
    assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
}
