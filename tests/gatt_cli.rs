//! `rlhf data gatt` and `rlhf eval gatt` end to end on a micro model (random weights, so no
//! instruction is obeyed and replies rarely end): the records keep the instruction in the first
//! user turn only, one record per sampled turn; a bad instruction file fails naming file, row and
//! field; the evaluation reports adherence for every turn of the demo world's held-out dialogs.
mod common;
use common::*;

#[test]
fn data_gatt_and_eval_gatt_on_a_micro_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(d.join("policy")));
    let dialogs = d.join("dialogs.jsonl");
    std::fs::write(
        &dialogs,
        "{\"turns\": [\"What is 2 plus 2?\", \"Name a color.\", \"What does a cow say?\"]}\n\
         {\"turns\": [\"Spell dog backwards.\", \"What is 9 minus 4?\"]}\n",
    )
    .unwrap();
    let inst = d.join("inst.jsonl");
    std::fs::write(&inst, "{\"text\": \"Speak like a pirate.\"}\n").unwrap();
    let out = d.join("gatt.jsonl");
    let args = |inst: &std::path::Path| {
        let mut c = rlhf();
        c.args(["data", "gatt", "--threads", "1", "--best-of-k", "2", "--max-new-tokens", "6", "--require-finished", "false", "--model"])
            .arg(d.join("policy"))
            .arg("--dialogs")
            .arg(&dialogs)
            .arg("--instructions")
            .arg(inst)
            .arg("--out")
            .arg(&out);
        c
    };
    let summary = json_line(&run_ok(&mut args(&inst)));
    assert_eq!(summary["dialogs"], 2);
    assert_eq!(summary["records"], 5, "one record per turn: 3 + 2");
    assert_eq!(summary["train_on"], "last_turn");
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 5);
    for r in &records {
        let users: Vec<&str> =
            r["messages"].as_array().unwrap().iter().filter(|m| m["role"] == "user").map(|m| m["content"].as_str().unwrap()).collect();
        assert!(users[0].starts_with("Speak like a pirate. "), "{users:?}");
        assert!(users[1..].iter().all(|u| !u.contains("pirate")), "{users:?}");
        assert_eq!(r["messages"].as_array().unwrap().last().unwrap()["role"], "assistant");
    }
    // The records are SFT data as `rlhf data validate` reads it.
    let side = d.join("gatt.jsonl.dialogs.jsonl");
    assert_eq!(std::fs::read_to_string(&side).unwrap().lines().count(), 2);

    // A bad instruction file: the error names it, the row and the field; nothing is written.
    std::fs::remove_file(&out).unwrap();
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"constraints\": [{\"kind\": \"language\", \"value\": \"Klingon\"}]}\n").unwrap();
    let e = run_err(&mut args(&bad));
    assert!(e.contains("bad.jsonl") && e.contains("row 2") && e.contains("`constraints`") && e.contains("Klingon"), "{e}");
    assert!(!out.exists());

    // The demo world's held-out GAtt dialogs, judged turn by turn.
    run_ok(rlhf().args(["data", "demo", "--sft", "10", "--pairs", "10", "--prompts", "10", "--out"]).arg(d.join("demo")));
    let ev = json_line(&run_ok(
        rlhf()
            .args(["eval", "gatt", "--threads", "1", "--turns", "3", "--max-new-tokens", "4", "--model"])
            .arg(d.join("policy"))
            .arg("--dialogs")
            .arg(d.join("demo/gatt_eval.jsonl")),
    ));
    let by_turn = ev["by_turn"].as_array().unwrap();
    assert_eq!(by_turn.len(), 3);
    for (t, a) in by_turn.iter().enumerate() {
        assert_eq!(a["turn"], t + 1);
        assert_eq!(a["dialogs"], 32);
        assert_eq!(a["obeyed"], 0, "four random tokens carry no instruction's mark");
    }
    assert!(ev["turns_5_10"].is_null());
}
