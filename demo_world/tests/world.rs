//! The demo world at benchmark scale, and the fixture the data layer's tests read (the world's
//! own files, so that `datasets` tests without this crate).
use std::fs;
use std::path::Path;

use datasets::{read_all, PreferenceRecord, PromptRecord, SftRecord};
use demo_world::scale::write_demo_scale;
use demo_world::{generate, DemoShares, DemoSizes};
use llama::Tokenizer;

fn tokenizer() -> Tokenizer {
    let path = llama::tokenizer::default_tokenizer_path()
        .filter(|p| p.is_file())
        .expect("the Llama-2 tokenizer (assets/tokenizer/tokenizer.json): run scripts/setup");
    Tokenizer::from_file(&path).unwrap()
}

/// `datasets/tests/fixtures/demo` is what `rlhf data demo --sft 300 --pairs 300 --prompts 100
/// --seed 4` writes: regenerate it with that command when the world changes.
#[test]
fn the_data_layer_fixture_is_the_demo_world() {
    let d = generate(DemoSizes { sft: 300, pairs: 300, prompts: 100 }, &DemoShares::default(), 4).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/tests/fixtures/demo");
    assert_eq!(read_all::<SftRecord>(&dir.join("sft.jsonl")).unwrap(), d.sft);
    assert_eq!(read_all::<PreferenceRecord>(&dir.join("preference_train.jsonl")).unwrap(), d.preference_train);
    assert_eq!(read_all::<PromptRecord>(&dir.join("prompts_train.jsonl")).unwrap(), d.prompts_train);
}

#[test]
fn demo_scale_is_deterministic_and_counts_reply_tokens_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let summary = write_demo_scale(&a, 40, 60, 2, &tok).unwrap();
    write_demo_scale(&b, 40, 60, 2, &tok).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let records: Vec<PreferenceRecord> = read_all(&a).unwrap();
    assert_eq!(records.len(), 40);
    let lens: Vec<usize> =
        records.iter().flat_map(|r| [&r.chosen, &r.rejected]).map(|t| tok.encode(t, false, false).unwrap().len()).collect();
    assert!(lens.iter().all(|&n| (60..100).contains(&n)), "{lens:?}");
    assert_eq!(summary.mean_reply_tokens, lens.iter().sum::<usize>() as f64 / lens.len() as f64);
    assert!(records.iter().all(|r| r.kind.is_some() && r.rating.is_some() && r.source.is_some()));
}
