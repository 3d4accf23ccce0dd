//! The Llama 2 RM mixtures and the tokenized cache: ratios, determinism, held-out splits; ids and
//! masks equal to the chat encoding; reuse, rebuild and interrupted builds.
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use datasets::cache::encode::{Encoding, RecordEncoder};
use datasets::cache::{build_cache, CacheSettings, PreferenceCache, PromptCache, SftCache};
use datasets::length::{LengthPolicy, Overlong};
use datasets::mixture::{mix_files, mix_records, MixSpec};
use datasets::{read_all, write_all, PreferenceKind, PreferenceRecord, PromptRecord, RecordKind, SftRecord};
use llama_text::chat::{encode_dialog, encode_prompt, AssistantMask, Message};
use llama_text::Tokenizer;

// ---- mixtures -----------------------------------------------------------------------------------

fn pair(i: usize, kind: Option<PreferenceKind>, source: Option<&str>) -> PreferenceRecord {
    PreferenceRecord {
        prompt: vec![Message::user(format!("question {i}"))],
        chosen: format!("good answer {i}"),
        rejected: format!("bad answer {i}"),
        rating: None,
        kind,
        chosen_safe: None,
        rejected_safe: None,
        source: source.map(str::to_string),
    }
}

const H: Option<PreferenceKind> = Some(PreferenceKind::Helpfulness);
const S: Option<PreferenceKind> = Some(PreferenceKind::Safety);

/// `n` comparisons of each (kind, source), numbered uniquely from `start`.
fn pool(groups: &[(usize, Option<PreferenceKind>, Option<&str>)]) -> Vec<PreferenceRecord> {
    let mut out = Vec::new();
    for &(n, kind, source) in groups {
        for _ in 0..n {
            out.push(pair(out.len(), kind, source));
        }
    }
    out
}

fn ids(records: &[PreferenceRecord]) -> HashSet<String> {
    records.iter().map(|r| r.chosen.clone()).collect()
}

fn spec(target: PreferenceKind, seed: u64) -> MixSpec {
    MixSpec { seed, ..MixSpec::paper(target) }
}

#[test]
fn helpfulness_mix_is_all_helpfulness_plus_as_much_again_from_the_rest() {
    let data = pool(&[(100, H, Some("meta_helpful")), (150, S, Some("meta_safety")), (70, None, Some("oss"))]);
    let mut s = spec(PreferenceKind::Helpfulness, 7);
    s.default_kind = PreferenceKind::Safety; // the kind-less "oss" rows count as the rest
    let (mix, test, summary) = mix_records(&data, &s).unwrap();
    assert!(test.is_empty());
    let helpful: Vec<_> = data.iter().filter(|r| r.kind == H).cloned().collect();
    assert!(ids(&helpful).is_subset(&ids(&mix)), "every helpfulness comparison is in the mix");
    let others = mix.iter().filter(|r| r.kind != H).count();
    assert_eq!((mix.len(), others), (200, 100));
    assert_eq!((summary.primary, summary.requested_sampled, summary.sampled, summary.pool), (100, 100, 100, 220));
    assert_eq!(summary.defaulted_kind, 70);
    assert_eq!(summary.mix.kind["helpfulness"], 100);
    assert_eq!(summary.mix.kind["safety"], 100);
    assert_eq!(summary.input.source["oss"], 70);
    // Both parts of the rest are drawn from (uniformly: 150:70 expected 68:32).
    let oss = mix.iter().filter(|r| r.source.as_deref() == Some("oss")).count();
    assert!((15..=50).contains(&oss), "{oss} of 100 sampled from oss");
    // Input order is kept.
    let pos: Vec<usize> = mix.iter().map(|r| data.iter().position(|d| d == r).unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn safety_mix_is_90_10() {
    let data = pool(&[(900, S, Some("meta_safety")), (2000, H, Some("meta_helpful"))]);
    let (mix, _, summary) = mix_records(&data, &spec(PreferenceKind::Safety, 1)).unwrap();
    assert_eq!(mix.iter().filter(|r| r.kind == S).count(), 900);
    assert_eq!(mix.iter().filter(|r| r.kind == H).count(), 100);
    assert_eq!(summary.mix.records, 1000);
    // A configurable ratio: 75/25.
    let s = MixSpec { primary_share: 0.75, ..spec(PreferenceKind::Safety, 1) };
    let (mix, _, _) = mix_records(&data, &s).unwrap();
    assert_eq!(mix.iter().filter(|r| r.kind == H).count(), 300);
    // Ratio 1: the target's data only.
    let s = MixSpec { primary_share: 1.0, ..spec(PreferenceKind::Safety, 1) };
    assert_eq!(mix_records(&data, &s).unwrap().0.len(), 900);
    // Out of range.
    assert!(mix_records(&data, &MixSpec { primary_share: 0.0, ..spec(PreferenceKind::Safety, 1) }).is_err());
}

#[test]
fn short_pool_takes_all_and_says_so() {
    let data = pool(&[(100, S, None), (4, H, None)]);
    let s = MixSpec { primary_share: 0.5, ..spec(PreferenceKind::Safety, 0) };
    let (mix, _, summary) = mix_records(&data, &s).unwrap();
    assert_eq!((mix.len(), summary.requested_sampled, summary.sampled), (104, 100, 4));
    let v = serde_json::to_value(&summary).unwrap();
    assert_eq!(v["actual_primary_share"], 100.0 / 104.0);
    assert!(v["shortfall"].as_str().unwrap().contains("the pool has only 4"), "{v}");
}

/// Issue 12: a safety mix of safety data only is 100% safety; the summary reported the share it
/// asked for (0.9) and nothing else.
#[test]
fn a_mix_whose_other_share_cannot_be_met_says_so() {
    let data = pool(&[(90, S, None)]);
    let (mix, _, summary) = mix_records(&data, &spec(PreferenceKind::Safety, 0)).unwrap();
    assert_eq!(mix.len(), 90);
    let v = serde_json::to_value(&summary).unwrap();
    assert_eq!((v["primary_share"].as_f64(), v["actual_primary_share"].as_f64()), (Some(0.9), Some(1.0)), "{v}");
    let why = v["shortfall"].as_str().unwrap_or_default();
    assert!(why.contains("asked for a 0.9 share of safety") && why.contains("100.0% safety"), "{v}");
    // A mix that meets its share says nothing.
    let (_, _, met) = mix_records(&pool(&[(90, S, None), (50, H, None)]), &spec(PreferenceKind::Safety, 0)).unwrap();
    let v = serde_json::to_value(&met).unwrap();
    assert!(v.get("shortfall").is_none() && v["actual_primary_share"] == 0.9, "{v}");
}

/// Issue 12: `data mix --target safety` over comparisons without `kind` (counted as helpfulness)
/// wrote a 0-row mix and exited 0. An empty mixture is an error that says why.
#[test]
fn an_empty_mix_is_an_error_naming_the_reason() {
    let unkinded = pool(&[(50, None, None)]);
    let e = mix_records(&unkinded, &spec(PreferenceKind::Safety, 0)).unwrap_err().to_string();
    assert!(e.contains("empty safety mixture") && e.contains("50 have no `kind`") && e.contains("--default-kind safety"), "{e}");
    let e = mix_records(&pool(&[(5, H, None)]), &spec(PreferenceKind::Safety, 0)).unwrap_err().to_string();
    assert!(e.contains("none of the 5 comparisons is of kind safety") && !e.contains("no `kind`"), "{e}");
    let e = mix_records(&[], &spec(PreferenceKind::Helpfulness, 0)).unwrap_err().to_string();
    assert!(e.contains("no comparisons"), "{e}");
    let s = MixSpec { sampled_sources: vec!["oss".into()], ..spec(PreferenceKind::Helpfulness, 0) };
    let e = mix_records(&pool(&[(5, H, Some("oss"))]), &s).unwrap_err().to_string();
    assert!(e.contains("sampled source (oss)"), "{e}");
    // Through the files too, leaving no output behind.
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.jsonl"), dir.path().join("mix.jsonl"));
    write_all(&input, &unkinded).unwrap();
    assert!(mix_files(&[input], &out, None, &spec(PreferenceKind::Safety, 0)).is_err());
    assert!(!out.exists());
}

#[test]
fn sampled_sources_go_to_the_pool_even_of_the_target_kind() {
    let data = pool(&[(100, H, Some("meta_helpful")), (100, H, Some("anthropic_helpful")), (100, S, Some("meta_safety"))]);
    let s = MixSpec { sampled_sources: vec!["anthropic_helpful".into()], ..spec(PreferenceKind::Helpfulness, 3) };
    let (mix, _, summary) = mix_records(&data, &s).unwrap();
    assert_eq!((summary.primary, summary.pool, mix.len()), (100, 200, 200));
    let meta = mix.iter().filter(|r| r.source.as_deref() == Some("meta_helpful")).count();
    assert_eq!(meta, 100);
}

#[test]
fn mixes_are_deterministic_per_seed() {
    let data = pool(&[(300, H, Some("a")), (500, S, Some("b"))]);
    let a = mix_records(&data, &spec(PreferenceKind::Helpfulness, 11)).unwrap();
    let b = mix_records(&data, &spec(PreferenceKind::Helpfulness, 11)).unwrap();
    let c = mix_records(&data, &spec(PreferenceKind::Helpfulness, 12)).unwrap();
    assert_eq!(a.0, b.0);
    assert_eq!(a.2, b.2);
    assert_ne!(ids(&a.0), ids(&c.0), "another seed draws another sample");
}

#[test]
fn held_out_splits_are_per_source_and_disjoint() {
    let groups = [(200, H, Some("meta_helpful")), (100, S, Some("meta_safety")), (50, H, None)];
    let data = pool(&groups);
    let s = MixSpec { test_fraction: 0.2, ..spec(PreferenceKind::Helpfulness, 5) };
    let (mix, test, summary) = mix_records(&data, &s).unwrap();
    assert_eq!(summary.test.source["meta_helpful"], 40);
    assert_eq!(summary.test.source["meta_safety"], 20);
    assert_eq!(summary.test.source["unspecified"], 10);
    assert_eq!(test.len(), 70);
    assert!(ids(&mix).is_disjoint(&ids(&test)));
    // The helpfulness comparisons not held out are all in the mix, with as many safety ones as
    // are left (80 < 200): the pool is short.
    assert_eq!(mix.iter().filter(|r| r.kind == H).count(), 200);
    assert_eq!((summary.requested_sampled, summary.sampled), (200, 80));
    // Adding a source does not move the other sources' splits.
    let mut more = data.clone();
    more.extend(pool(&[(60, S, Some("new"))]).into_iter().map(|mut r| {
        r.chosen = format!("new {}", r.chosen);
        r
    }));
    let (_, test2, _) = mix_records(&more, &s).unwrap();
    let old: HashSet<_> = ids(&test2).into_iter().filter(|c| !c.starts_with("new")).collect();
    assert_eq!(old, ids(&test));
}

#[test]
fn mix_files_streams_both_formats_like_mix_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = pool(&[(120, H, Some("a")), (80, S, Some("b")), (40, None, Some("c"))]);
    let (first, second) = data.split_at(100);
    let in1 = dir.path().join("one.jsonl");
    let in2 = dir.path().join("two.parquet");
    write_all(&in1, first).unwrap();
    write_all(&in2, second).unwrap();
    let s = MixSpec { test_fraction: 0.1, ..spec(PreferenceKind::Safety, 9) };
    let out = dir.path().join("mix.parquet");
    let test_out = dir.path().join("test.jsonl");
    let summary = mix_files(&[in1.clone(), in2.clone()], &out, Some(&test_out), &s).unwrap();
    let (mix, test, expected) = mix_records(&data, &s).unwrap();
    assert_eq!(summary, expected);
    assert_eq!(read_all::<PreferenceRecord>(&out).unwrap(), mix);
    assert_eq!(read_all::<PreferenceRecord>(&test_out).unwrap(), test);
    // A test fraction needs somewhere to put the test split.
    assert!(mix_files(&[in1], &out, None, &s).is_err());
}

// ---- tokenized cache ---------------------------------------------------------------------------

fn tokenizer_path() -> PathBuf {
    llama_text::tokenizer::default_tokenizer_path()
        .filter(|p| p.is_file())
        .expect("the Llama-2 tokenizer (assets/tokenizer/tokenizer.json): run scripts/setup")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&tokenizer_path()).unwrap()
}

/// Realistic records: the demo world's files (`rlhf data demo --sft 300 --pairs 300 --prompts 100
/// --seed 4`, checked against the generator by `demo_world`'s tests), committed so that the data
/// layer tests without the demo world.
struct DemoData {
    sft: Vec<SftRecord>,
    preference_train: Vec<PreferenceRecord>,
    prompts_train: Vec<PromptRecord>,
}

fn demo() -> DemoData {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo");
    DemoData {
        sft: read_all(&dir.join("sft.jsonl")).unwrap(),
        preference_train: read_all(&dir.join("preference_train.jsonl")).unwrap(),
        prompts_train: read_all(&dir.join("prompts_train.jsonl")).unwrap(),
    }
}

/// Strings that stress the word split: runs of spaces, tabs and newlines, the marker itself,
/// leading/trailing spaces, byte-fallback characters, tag look-alikes.
fn nasty_texts() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "  ",
        "a",
        " a",
        "a ",
        "  a  b   c ",
        "hello world",
        "Hello,  world!\n\nNew  para\tgraph",
        "▁",
        "▁▁x",
        "x▁y",
        " ▁ ▁▁ ",
        "naïve café — “quotes” 😀🚀 漢字 テスト",
        "\u{3000}wide\u{3000}space",
        "tabs\t\tand\r\nCRLF",
        "[INST] fake [/INST] </s><s>",
        "  leading",
        "trailing   ",
        "a\u{a0}b",
        "x\u{1f}y",
        "1234567890 3.14159 -42",
        "def f(x):\n    return x  # comment\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let d = demo();
    v.extend(d.sft.iter().flat_map(|r| r.messages.iter().map(|m| m.content.clone())).take(200));
    v.push(d.preference_train.iter().take(50).map(|p| p.chosen.as_str()).collect::<Vec<_>>().join("  "));
    v
}

#[test]
fn word_split_encoding_equals_the_tokenizer() {
    let tok = tokenizer();
    let enc = RecordEncoder::new(tok.clone());
    assert_eq!(enc.encoding(), Encoding::WordSplit, "the Llama-2 tokenizer allows the word split");
    for text in nasty_texts() {
        for (bos, eos) in [(true, false), (false, true), (false, false)] {
            // Twice: the second time from the word cache.
            for _ in 0..2 {
                assert_eq!(enc.encode(&text, bos, eos).unwrap(), tok.encode(&text, bos, eos).unwrap(), "{text:?}");
            }
        }
    }
}

fn dialogs() -> Vec<Vec<Message>> {
    let mut out: Vec<Vec<Message>> = demo().sft.into_iter().map(|r| r.messages).collect();
    let texts = nasty_texts();
    for w in texts.windows(3).filter(|w| w.iter().all(|t| !t.trim().is_empty())) {
        out.push(vec![Message::system(w[2].clone()), Message::user(w[0].clone()), Message::assistant(w[1].clone())]);
        out.push(vec![
            Message::user(w[0].clone()),
            Message::assistant(w[1].clone()),
            Message::user(w[2].clone()),
            Message::assistant(format!("  {}  ", w[0])),
        ]);
    }
    out
}

#[test]
fn dialogs_and_masks_equal_encode_dialog() {
    let tok = tokenizer();
    for enc in [RecordEncoder::new(tok.clone()), RecordEncoder::with_encoding(tok.clone(), Encoding::Exact)] {
        for d in dialogs() {
            for mask in [AssistantMask::AllTurns, AssistantMask::LastTurn] {
                assert_eq!(enc.dialog(&d, mask).unwrap(), encode_dialog(&tok, &d, mask).unwrap(), "{d:?}");
            }
            let prompt = &d[..d.len() - 1];
            assert_eq!(enc.prompt(prompt).unwrap(), encode_prompt(&tok, prompt).unwrap());
        }
    }
}

/// The claim the preference cache rests on: the chat encoding of a completed pair is
/// `encode_prompt(prompt)` followed by `encode("{reply.strip()} ", bos=false, eos=true)`, and the
/// variant with a leading space, `encode(" {reply} ")`, is *not* (one "▁" too many).
#[test]
fn pair_split_equals_the_chat_encoding_of_the_completed_pair() {
    let tok = tokenizer();
    let enc = RecordEncoder::new(tok.clone());
    let exact = RecordEncoder::with_encoding(tok.clone(), Encoding::Exact);
    let mut prompts: Vec<Vec<Message>> = dialogs()
        .into_iter()
        .map(|mut d| {
            d.pop();
            d
        })
        .collect();
    prompts.extend(demo().preference_train.iter().map(|p| p.prompt.clone()));
    let replies = nasty_texts();
    let mut checked = 0;
    for (i, prompt) in prompts.iter().enumerate() {
        let chosen = &replies[i % replies.len()];
        let rejected = &replies[(i * 7 + 3) % replies.len()];
        let [p, c, r] = enc.pair(prompt, chosen, rejected).unwrap();
        assert_eq!(p, encode_prompt(&tok, prompt).unwrap());
        let trimmed = chosen.trim_matches(|ch: char| ch.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&ch));
        assert_eq!(c, tok.encode(&format!("{trimmed} "), false, true).unwrap(), "{chosen:?}");
        for (reply, ids) in [(chosen, &c), (rejected, &r)] {
            let mut d = prompt.clone();
            d.push(Message::assistant(reply.clone()));
            let full = encode_dialog(&tok, &d, AssistantMask::AllTurns).unwrap().ids;
            assert_eq!([p.as_slice(), ids].concat(), full, "{prompt:?} + {reply:?}");
        }
        assert_eq!(exact.pair(prompt, chosen, rejected).unwrap(), [p, c, r]);
        checked += 1;
    }
    assert!(checked > 500);
    let with_space = tok.encode(" Paris is the capital. ", false, true).unwrap();
    let d = [Message::user("Capital of France?"), Message::assistant("Paris is the capital.")];
    let full = encode_dialog(&tok, &d, AssistantMask::AllTurns).unwrap().ids;
    assert_ne!([encode_prompt(&tok, &d[..1]).unwrap(), with_space].concat(), full);
}

struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
    sft: PathBuf,
    pref: PathBuf,
    pref_parquet: PathBuf,
    prompts: PathBuf,
    data: DemoData,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let data = demo();
    let p = |n: &str| dir.path().join(n);
    let mut sft = data.sft.clone();
    // A multi-turn dialog with a system message, so that the two mask modes differ.
    sft.push(SftRecord { messages: dialogs().into_iter().find(|d| d.len() == 4).unwrap() });
    write_all(&p("sft.jsonl"), &sft).unwrap();
    write_all(&p("pref.jsonl"), &data.preference_train).unwrap();
    write_all(&p("pref.parquet"), &data.preference_train).unwrap();
    write_all(&p("prompts.jsonl"), &data.prompts_train).unwrap();
    Files {
        root: p("cache"),
        sft: p("sft.jsonl"),
        pref: p("pref.jsonl"),
        pref_parquet: p("pref.parquet"),
        prompts: p("prompts.jsonl"),
        data,
        _dir: dir,
    }
}

#[test]
fn sft_cache_round_trip() {
    let f = files();
    let tok = tokenizer();
    let h = build_cache(RecordKind::Sft, std::slice::from_ref(&f.sft), &tokenizer_path(), &CacheSettings::default(), &f.root).unwrap();
    assert!(!h.reused);
    let records: Vec<SftRecord> = read_all(&f.sft).unwrap();
    let cache = SftCache::open(&h.dir).unwrap();
    assert_eq!(cache.len(), records.len());
    let mut tokens = 0;
    for (i, r) in records.iter().enumerate() {
        let want = encode_dialog(&tok, &r.messages, AssistantMask::AllTurns).unwrap();
        let got = cache.get(i).unwrap();
        assert_eq!(got.ids, want.ids.as_slice());
        assert_eq!(got.loss_mask, want.assistant_mask.iter().map(|&b| u8::from(b)).collect::<Vec<_>>().as_slice());
        tokens += want.ids.len();
    }
    assert!(cache.get(records.len()).is_none());
    assert_eq!((h.stats.records, h.stats.tokens), (records.len() as u64, tokens as u64));
    assert_eq!(h.manifest.encoding, "word_split");
}

#[test]
fn preference_cache_round_trip_jsonl_and_parquet() {
    let f = files();
    let tok = tokenizer();
    let settings = CacheSettings::default();
    let a = build_cache(RecordKind::Preference, std::slice::from_ref(&f.pref), &tokenizer_path(), &settings, &f.root).unwrap();
    let b = build_cache(RecordKind::Preference, std::slice::from_ref(&f.pref_parquet), &tokenizer_path(), &settings, &f.root).unwrap();
    assert_ne!(a.dir, b.dir, "another input file, another key");
    for h in [a, b] {
        let cache = PreferenceCache::open(&h.dir).unwrap();
        assert_eq!(cache.len(), f.data.preference_train.len());
        for (i, r) in f.data.preference_train.iter().enumerate() {
            let got = cache.get(i).unwrap();
            assert_eq!(got.prompt, encode_prompt(&tok, &r.prompt).unwrap().as_slice());
            for (reply, full) in [(&r.chosen, got.chosen_full()), (&r.rejected, got.rejected_full())] {
                let mut d = r.prompt.clone();
                d.push(Message::assistant(reply.clone()));
                assert_eq!(full, encode_dialog(&tok, &d, AssistantMask::AllTurns).unwrap().ids);
            }
            assert_eq!((got.rating, got.kind, got.source), (r.rating, r.kind, r.source.as_deref()));
            assert_eq!((got.chosen_safe, got.rejected_safe), (r.chosen_safe, r.rejected_safe));
        }
        assert!(cache.get(cache.len()).is_none());
    }
}

#[test]
fn prompt_cache_round_trip() {
    let f = files();
    let tok = tokenizer();
    let h =
        build_cache(RecordKind::Prompts, std::slice::from_ref(&f.prompts), &tokenizer_path(), &CacheSettings::default(), &f.root).unwrap();
    let cache = PromptCache::open(&h.dir).unwrap();
    let records: Vec<PromptRecord> = read_all(&f.prompts).unwrap();
    assert_eq!(cache.len(), records.len());
    assert!(records.iter().any(|r| r.is_safety) && records.iter().any(|r| !r.is_safety));
    for (r, got) in records.iter().zip(cache.iter()) {
        assert_eq!(got.ids, encode_prompt(&tok, &r.prompt).unwrap().as_slice());
        assert_eq!(got.is_safety, r.is_safety);
    }
    // A cache opens only as its own kind.
    assert!(SftCache::open(&h.dir).is_err());
}

#[test]
fn reused_when_unchanged_rebuilt_when_input_tokenizer_or_settings_change() {
    let f = files();
    let settings = CacheSettings::default();
    let build =
        |input: &Path, tok: &Path, s: &CacheSettings| build_cache(RecordKind::Sft, &[input.to_path_buf()], tok, s, &f.root).unwrap();
    let first = build(&f.sft, &tokenizer_path(), &settings);
    let again = build(&f.sft, &tokenizer_path(), &settings);
    assert!(again.reused);
    assert_eq!(again.dir, first.dir);

    // One byte of the input changed, same size, mtime put back: content hashing sees it.
    let original = fs::read(&f.sft).unwrap();
    let mtime = fs::metadata(&f.sft).unwrap().modified().unwrap();
    let key = b"\"content\":\"";
    let at = original.windows(key.len()).position(|w| w == key).expect("a message") + key.len();
    let mut changed = original.clone();
    changed[at] = if changed[at] == b'Z' { b'Y' } else { b'Z' }; // the first letter of a message
    fs::write(&f.sft, &changed).unwrap();
    fs::File::options().write(true).open(&f.sft).unwrap().set_modified(mtime).unwrap();
    let edited = build(&f.sft, &tokenizer_path(), &settings);
    assert!(!edited.reused);
    assert_ne!(edited.dir, first.dir);
    fs::write(&f.sft, &original).unwrap();
    assert!(build(&f.sft, &tokenizer_path(), &settings).reused, "the original bytes find their cache again");

    // Another tokenizer.json (the same tokenizer, written differently): another key.
    let other_tok = f.root.parent().unwrap().join("tokenizer.json");
    let json: serde_json::Value = serde_json::from_slice(&fs::read(tokenizer_path()).unwrap()).unwrap();
    fs::write(&other_tok, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let t = build(&f.sft, &other_tok, &settings);
    assert!(!t.reused);
    assert_ne!(t.dir, first.dir);

    // Other settings: the last-turn mask, a length policy.
    let last = CacheSettings { mask: AssistantMask::LastTurn, ..settings };
    let l = build(&f.sft, &tokenizer_path(), &last);
    assert!(!l.reused);
    assert_ne!(l.dir, first.dir);
    let (all, last) = (SftCache::open(&first.dir).unwrap(), SftCache::open(&l.dir).unwrap());
    let n = all.len() - 1; // the multi-turn dialog
    assert_eq!(all.get(n).unwrap().ids, last.get(n).unwrap().ids);
    let ones = |m: &[u8]| m.iter().filter(|&&b| b == 1).count();
    assert!(ones(last.get(n).unwrap().loss_mask) < ones(all.get(n).unwrap().loss_mask));
    let capped = CacheSettings { length: Some(LengthPolicy { max_tokens: 40, overlong: Overlong::Drop }), ..settings };
    let c = build(&f.sft, &tokenizer_path(), &capped);
    assert!(!c.reused && c.dir != first.dir);
    assert!(c.manifest.dropped > 0 && c.manifest.max_example_tokens <= 40);
    assert_eq!(c.manifest.records + c.manifest.dropped, first.manifest.records);
    // The mask mode does not enter a preference cache's key.
    let p1 = build_cache(RecordKind::Preference, std::slice::from_ref(&f.pref), &tokenizer_path(), &settings, &f.root).unwrap();
    let last_pref = CacheSettings { mask: AssistantMask::LastTurn, ..settings };
    let p2 = build_cache(RecordKind::Preference, std::slice::from_ref(&f.pref), &tokenizer_path(), &last_pref, &f.root).unwrap();
    assert!(p2.reused && p1.dir == p2.dir);
}

#[test]
fn interrupted_builds_do_not_poison_the_cache() {
    let f = files();
    let settings = CacheSettings::default();
    let good = build_cache(RecordKind::Sft, std::slice::from_ref(&f.sft), &tokenizer_path(), &settings, &f.root).unwrap();
    let name = good.dir.file_name().unwrap().to_string_lossy().into_owned();
    let want: Vec<Vec<u32>> = SftCache::open(&good.dir).unwrap().iter().map(|t| t.ids.to_vec()).collect();

    // A build killed half-way: its temp folder (of a process that no longer runs) is left with
    // partial files; and the published folder lost its manifest (an older, non-atomic copy).
    let stale = f.root.join(format!(".tmp-{name}-4294967290-1"));
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("tokens.u32"), [1u8, 2, 3]).unwrap();
    fs::remove_file(good.dir.join("manifest.json")).unwrap();
    fs::write(good.dir.join("tokens.u32"), [0u8; 8]).unwrap();

    let rebuilt = build_cache(RecordKind::Sft, std::slice::from_ref(&f.sft), &tokenizer_path(), &settings, &f.root).unwrap();
    assert!(!rebuilt.reused, "a folder without a manifest is not a cache");
    assert_eq!(rebuilt.dir, good.dir);
    assert!(!stale.exists(), "the dead build's temp folder is cleaned up");
    let got: Vec<Vec<u32>> = SftCache::open(&rebuilt.dir).unwrap().iter().map(|t| t.ids.to_vec()).collect();
    assert_eq!(got, want);

    // A manifest over truncated files is not trusted either.
    let tokens = rebuilt.dir.join("tokens.u32");
    let bytes = fs::read(&tokens).unwrap();
    fs::write(&tokens, &bytes[..bytes.len() - 4]).unwrap();
    assert!(SftCache::open(&rebuilt.dir).is_err());
    let again = build_cache(RecordKind::Sft, std::slice::from_ref(&f.sft), &tokenizer_path(), &settings, &f.root).unwrap();
    assert!(!again.reused);
    assert_eq!(SftCache::open(&again.dir).unwrap().iter().map(|t| t.ids.to_vec()).collect::<Vec<_>>(), want);
    // Nothing but the cache folders is left in the root.
    let left: Vec<String> = fs::read_dir(&f.root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec![name]);
}

#[test]
fn a_bad_row_fails_the_build_naming_file_and_line_and_leaves_nothing() {
    let f = files();
    let bad = f.root.parent().unwrap().join("bad.jsonl");
    let mut text = fs::read_to_string(&f.pref).unwrap();
    text.push_str("{\"prompt\": \"q\", \"chosen\": \"same\", \"rejected\": \"same\"}\n");
    fs::write(&bad, text).unwrap();
    let e = build_cache(RecordKind::Preference, &[bad], &tokenizer_path(), &CacheSettings::default(), &f.root).unwrap_err().to_string();
    let line = f.data.preference_train.len() + 1;
    assert!(e.contains("bad.jsonl") && e.contains(&format!("line {line}")) && e.contains("rejected"), "{e}");
    assert_eq!(fs::read_dir(&f.root).unwrap().count(), 0, "no folder, temporary or not, is left");
}

/// Issue 12: an empty input names the file instead of caching zero sequences.
#[test]
fn an_empty_input_fails_the_build_naming_the_file() {
    let f = files();
    let empty = f.root.with_file_name("empty.jsonl");
    fs::write(&empty, "\n").unwrap();
    for inputs in [vec![empty.clone()], vec![f.pref.clone(), empty.clone()]] {
        let e =
            build_cache(RecordKind::Preference, &inputs, &tokenizer_path(), &CacheSettings::default(), &f.root).unwrap_err().to_string();
        assert!(e.contains("empty.jsonl") && e.contains("the file is empty"), "{e}");
    }
    assert!(!f.root.exists() || fs::read_dir(&f.root).unwrap().count() == 0, "no cache folder is left");
}
