//! The annotation page end to end in headless Chromium (tools/browser/annotate_e2e.mjs, with
//! puppeteer-core; `scripts/setup` installs both): sign in, rate 5 pairs with the keyboard, undo
//! one, kill -9 the server and restart it, then finish with a second annotator; the output must be
//! exactly what was pressed, valid for `rlhf data validate`, and equal to the import of the
//! journal. Replies carrying HTML and scripts must show as text.
//!
//! Skipped, with a message, where Chromium or node cannot be had; `RLHF_REQUIRE_BROWSER=1` turns
//! the skip into a failure (for CI machines that must run it).
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{json_line, rlhf, run_ok};
use serde_json::{json, Value};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/browser")
}

fn chromium() -> Option<PathBuf> {
    let p = std::env::var_os("CHROME_PATH").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    p.exists().then_some(p)
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if chromium().is_none() {
        return Some("no Chromium (/usr/bin/chromium or $CHROME_PATH): scripts/setup installs the Debian package `chromium`".into());
    }
    if Command::new("node").arg("--version").output().map_or(true, |o| !o.status.success()) {
        return Some("no node on PATH".into());
    }
    if !browser_dir().join("node_modules/puppeteer-core/package.json").exists() {
        return Some("tools/browser/node_modules has no puppeteer-core: run scripts/setup (npm ci in tools/browser)".into());
    }
    None
}

fn pairs() -> Vec<Value> {
    let mut v = vec![
        json!({"id": "p-intro", "prompt": [
                {"role": "system", "content": "You are a helpful, respectful and honest assistant."},
                {"role": "user", "content": "Explain in two sentences why the sky is blue."}],
            "reply_a": "Sunlight is scattered by the molecules of the air, and blue light, with its shorter wavelength, is scattered much more than red (Rayleigh scattering).\n\nSo wherever you look away from the Sun, the sky sends you mostly scattered blue light.",
            "reply_b": "The sky is blue because it reflects the oceans.",
            "model_a": "iter2@t0.8", "model_b": "iter1@t1.2", "kind": "helpfulness"}),
        json!({"id": "p-xss", "prompt": "Show me an <b>HTML</b> snippet.",
            "reply_a": "<script>window.__pwned = 1; alert('xss')</script>Here it is.",
            "reply_b": "<img src=x onerror=\"window.__pwned = 2\"> & <iframe src=\"javascript:alert(3)\"></iframe>",
            "model_a": "m1", "model_b": "m2", "kind": "safety"}),
    ];
    for i in 0..6 {
        v.push(json!({"id": format!("p{i}"), "prompt": format!("What is {i} + {i}?"),
            "reply_a": format!("{i} + {i} = {}.", 2 * i), "reply_b": format!("It is {}.", 2 * i + 1),
            "model_a": "good", "model_b": "bad", "source": "e2e"}));
    }
    v
}

/// `rlhf annotate serve` on a free loopback port; returns the child and the page's URL.
fn serve(pairs: &Path, out: &Path) -> (Child, String) {
    let mut child = rlhf()
        .args(["annotate", "serve", "--addr", "127.0.0.1:0", "--pairs"])
        .arg(pairs)
        .arg("--out")
        .arg(out)
        .env("RLHF_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("annotate: serving on ").unwrap_or_else(|| panic!("no URL line: {line:?}")).to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (child, url)
}

fn drive(phase: &str, url: &str, log: &Path, shot: Option<&Path>) -> Value {
    let mut cmd = Command::new("node");
    cmd.current_dir(browser_dir()).arg("annotate_e2e.mjs").args([phase, url]).arg(log);
    if let Some(s) = shot {
        cmd.arg(s);
    }
    let out = cmd.output().unwrap();
    let v: Value = std::fs::read_to_string(log).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "browser phase {phase} failed:\n{}{}\nlog: {v}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

fn jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn events(log: &Value) -> &Vec<Value> {
    log["events"].as_array().unwrap()
}

#[test]
fn rate_with_the_keyboard_undo_kill_restart_finish() {
    if let Some(why) = missing() {
        assert!(std::env::var_os("RLHF_REQUIRE_BROWSER").is_none(), "RLHF_REQUIRE_BROWSER is set but: {why}");
        eprintln!("SKIPPED annotate_browser: {why}");
        return;
    }
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pairs_path = dir.path().join("pairs.jsonl");
    std::fs::write(&pairs_path, pairs().iter().map(|p| format!("{p}\n")).collect::<String>()).unwrap();
    let out = dir.path().join("prefs.jsonl");
    let journal = dir.path().join("prefs.ratings.jsonl");

    // Phase 1: 5 ratings, the 5th undone; the screenshot for the README when asked for.
    let (mut server, url) = serve(&pairs_path, &out);
    let shot = std::env::var_os("RLHF_ANNOTATE_SCREENSHOT").map(PathBuf::from);
    let first = drive("first", &url, &dir.path().join("first.json"), shot.as_deref());
    assert_eq!(first["ratings"].as_array().unwrap().len(), 4);
    assert_eq!(events(&first)[0]["first_pair"], "p-intro");
    assert!(events(&first).iter().any(|e| e["markup_shown_as_text"] == "p-xss"), "{first}");
    let undone = events(&first).iter().find_map(|e| e["undone"].as_str()).unwrap().to_string();

    // kill -9: nothing acknowledged is lost; the restart continues with the undone pair.
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(jsonl(&out).len(), 4, "every acknowledged rating is in the output after kill -9");
    let kinds: Vec<String> = jsonl(&journal).iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["rate", "rate", "rate", "rate", "rate", "undo"]);
    let (mut server, url) = serve(&pairs_path, &out);
    let second = drive("finish", &url, &dir.path().join("second.json"), None);
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(events(&second)[0]["alice_first_after_restart"], undone.as_str());
    let bob_first = events(&second).iter().find_map(|e| e["bob_first"].as_str()).unwrap();
    assert_eq!(bob_first, undone, "alice skipped it, so bob gets it");

    // The output is exactly what was pressed: one record per pair, chosen = the reply picked.
    let pressed: Vec<&Value> = first["ratings"].as_array().unwrap().iter().chain(second["ratings"].as_array().unwrap()).collect();
    let records = jsonl(&out);
    assert_eq!(records.len(), 8);
    assert_eq!(pressed.len(), 8);
    let annotators: std::collections::HashSet<&str> = records.iter().map(|r| r["annotator"].as_str().unwrap()).collect();
    assert_eq!(annotators, ["alice", "bob"].into_iter().collect());
    for p in &pressed {
        let r = records.iter().find(|r| r["pair_id"] == p["pair_id"]).unwrap_or_else(|| panic!("no record for {p}"));
        assert_eq!(r["chosen"], p["chosen_text"], "{p}");
        assert_eq!(r["rating"], p["strength"]);
        assert_eq!(r["annotator"], p["annotator"]);
        let (cs, rs) = match p["safety"].as_str().unwrap() {
            "only_chosen_safe" => (true, false),
            "both_safe" => (true, true),
            _ => (false, false),
        };
        assert_eq!((r["chosen_safe"].as_bool(), r["rejected_safe"].as_bool()), (Some(cs), Some(rs)));
    }
    let xss = records.iter().find(|r| r["pair_id"] == "p-xss").unwrap();
    assert_eq!(xss["kind"], "safety");
    assert!(xss["chosen"].as_str().unwrap().contains('<'), "stored as the text it is");

    // `rlhf data validate` accepts it; import of the journal gives the same file.
    let v = json_line(&run_ok(rlhf().args(["data", "validate", "--kind", "preference"]).arg(&out)));
    assert_eq!((v["valid"].as_u64(), v["invalid"].as_u64()), (Some(8), Some(0)), "{v}");
    let again = dir.path().join("again.jsonl");
    run_ok(rlhf().args(["annotate", "import", "--pairs"]).arg(&pairs_path).arg("--ratings").arg(&journal).arg("--out").arg(&again));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&out).unwrap());
    eprintln!("annotate_browser: both phases in {:.1} s", t0.elapsed().as_secs_f64());
}
