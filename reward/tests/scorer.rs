//! `reward::combine::RewardScorer`, the one scorer of rejection sampling and PPO, gives exactly
//! (bit for bit) what each stage computed before it existed: rejection sampling sorted the
//! sequences by length and read σ-scores back in input order; PPO scored them in sampling order.
//! The source is the model `R_c` came from.
use datasets::PromptRecord;
use llama::{Message, Tokenizer};
use reward::combine::{combined, response_tokens, score_sequences, sigmoid, RewardModels, RewardSource, ScoreOrder, ScorerSpec};
use std::path::Path;
use tch::{Device, Kind};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gqa")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&llama::tokenizer::default_tokenizer_path().expect("run scripts/setup first")).unwrap()
}

fn prompt(text: &str, is_safety: bool) -> PromptRecord {
    PromptRecord { prompt: vec![Message::user(text)], is_safety }
}

#[test]
fn scores_bit_equal_to_each_stage_and_name_the_source() {
    let tok = tokenizer();
    // Two different random heads on the same trunk: a "helpfulness" and a "safety" model.
    let rms = RewardModels::load(Some(&fixture()), Some(&fixture()), Device::Cpu, Kind::Float, (11, 12)).unwrap();
    let prompts = [prompt("How do I pick a lock?", true), prompt("What is 2 plus 2?", false), prompt("Name a color.", false)];
    let replies =
        ["I can't help with that.", "4", "Blue, or perhaps a very long answer about the many shades of green and red.", "", "Red."];
    let items: Vec<(&PromptRecord, &str)> = (0..10).map(|i| (&prompts[i % prompts.len()], replies[(i * 7) % replies.len()])).collect();
    let seqs: Vec<Vec<u32>> = items.iter().map(|(p, r)| response_tokens(&tok, &p.prompt, r, 24).unwrap()).collect();
    assert!(seqs.iter().any(|s| s.len() == 24), "some sequences are cut to max_len");
    let (h, s) = (&rms.helpfulness.as_ref().unwrap().model, &rms.safety.as_ref().unwrap().model);

    for (order, batch) in [(ScoreOrder::ByLength, 3), (ScoreOrder::AsGiven, 4)] {
        let spec = ScorerSpec { threshold: 0.5, max_len: 24, batch, order };
        let got = rms.scorer(spec).score(&tok, &items).unwrap();
        // What the stage did before: the same sequences, batches and order, by hand.
        let mut idx: Vec<usize> = (0..seqs.len()).collect();
        if order == ScoreOrder::ByLength {
            idx.sort_by_key(|&i| seqs[i].len());
        }
        let sorted: Vec<Vec<u32>> = idx.iter().map(|&i| seqs[i].clone()).collect();
        let mut raw_h = vec![0.0; seqs.len()];
        let mut raw_s = vec![0.0; seqs.len()];
        for (k, (a, b)) in score_sequences(h, &sorted, Device::Cpu, batch)
            .unwrap()
            .into_iter()
            .zip(score_sequences(s, &sorted, Device::Cpu, batch).unwrap())
            .enumerate()
        {
            (raw_h[idx[k]], raw_s[idx[k]]) = (a, b);
        }
        let mut sources = Vec::new();
        for (i, g) in got.iter().enumerate() {
            let (hs, ss) = (sigmoid(raw_h[i]), sigmoid(raw_s[i]));
            let rc = combined(Some(ss), Some(hs), items[i].0.is_safety, 0.5);
            assert_eq!(g.rc.to_bits(), rc.to_bits(), "{order:?} {i}: R_c");
            assert_eq!((g.helpfulness_raw, g.safety_raw), (Some(raw_h[i]), Some(raw_s[i])), "{order:?} {i}");
            assert_eq!((g.helpfulness, g.safety), (Some(hs), Some(ss)), "{order:?} {i}");
            let want = if items[i].0.is_safety || ss < 0.5 { RewardSource::Safety } else { RewardSource::Helpfulness };
            assert_eq!(g.source, want, "{order:?} {i}");
            assert_eq!(g.rc, if want == RewardSource::Safety { ss } else { hs });
            sources.push(g.source);
        }
        assert!(sources.contains(&RewardSource::Safety), "{sources:?}");
    }

    // With one model, its score is R_c and it is the source.
    let only_h = RewardModels::load(Some(&fixture()), None, Device::Cpu, Kind::Float, (11, 0)).unwrap();
    let spec = ScorerSpec { threshold: 0.15, max_len: 24, batch: 4, order: ScoreOrder::AsGiven };
    for g in only_h.scorer(spec).score(&tok, &items).unwrap() {
        assert_eq!((g.rc, g.source, g.safety), (g.helpfulness.unwrap(), RewardSource::Helpfulness, None));
    }
}
