// TEMPORARY diagnostics (deleted before hand-off).
#[test]
#[ignore]
fn dump_truth() {
    let path = std::env::var("RS_LOG").unwrap();
    let out = std::env::var("RS_OUT").unwrap();
    let log = rejection_sampling::shard::SampleLog::open(std::path::Path::new(&path)).unwrap();
    let mut lines = String::new();
    for r in log.records() {
        for s in &r.samples {
            let j = datasets::demo::judge_messages(&r.prompt, &s.text);
            lines.push_str(&serde_json::json!({"key": r.key, "cat": j.category.map(|c| c.as_str()), "fam": j.family.map(|f| f.as_str()), "helpful": j.helpful, "safe": j.safe, "refusal": j.refusal, "h": s.helpfulness, "s": s.safety, "r": s.reward, "text": s.text, "is_safety": r.is_safety}).to_string());
            lines.push('\n');
        }
    }
    std::fs::write(out, lines).unwrap();
}
