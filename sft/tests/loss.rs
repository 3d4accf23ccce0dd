//! The SFT loss on hand-built examples: the mask selects exactly the assistant tokens, and the
//! packed loss equals the sum of the unpacked losses.
use llama::{checkpoint, encode_dialog, AssistantMask, Message, Tokenizer};
use sft::data::pack;
use sft::trainer::rows_nll_sum;
use sft::Example;
use std::path::Path;
use tch::{Device, Kind};

fn model() -> (tch::nn::VarStore, llama::Llama) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gqa");
    checkpoint::load_causal_lm(&dir, Device::Cpu, Kind::Float).unwrap()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&llama::tokenizer::default_tokenizer_path().expect("run scripts/setup first")).unwrap()
}

fn examples(tok: &Tokenizer) -> Vec<Example> {
    let dialogs = [
        vec![Message::user("What is 2 plus 3?"), Message::assistant("2 plus 3 is 5.")],
        vec![Message::system("Be brief."), Message::user("Capital of France?"), Message::assistant("Paris.")],
        vec![
            Message::user("Hi"),
            Message::assistant("Hello! How can I help?"),
            Message::user("Spell cat backwards."),
            Message::assistant("tac"),
        ],
    ];
    dialogs
        .iter()
        .map(|d| {
            let e = encode_dialog(tok, d, AssistantMask::AllTurns).unwrap();
            Example { ids: e.ids, loss_mask: e.assistant_mask }
        })
        .collect()
}

#[test]
fn targets_are_exactly_the_assistant_tokens_with_eos() {
    let tok = tokenizer();
    let exs = examples(&tok);
    let e = &exs[0];
    // `<s>[INST] What is 2 plus 3? [/INST] 2 plus 3 is 5. </s>`: the targets are the reply and EOS.
    let reply_ids: Vec<u32> = e.ids.iter().zip(&e.loss_mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(*reply_ids.last().unwrap(), tok.eos_id());
    assert_eq!(tok.decode(&reply_ids).unwrap().trim(), "2 plus 3 is 5.");
    let rows = pack(&exs[..1], 4096, true);
    assert_eq!(rows[0].num_targets(), reply_ids.len());
    // Prompt tokens are never targets: position i predicts i+1, so a target position's next token is masked-in.
    for (i, &t) in rows[0].targets.iter().enumerate() {
        assert_eq!(t, i + 1 < e.ids.len() && e.loss_mask[i + 1]);
    }
    // Two turns: both replies trained (all turns) or only the last (GAtt style).
    let d = vec![Message::user("Hi"), Message::assistant("Hello!"), Message::user("Bye"), Message::assistant("Goodbye!")];
    let all = encode_dialog(&tok, &d, AssistantMask::AllTurns).unwrap();
    let last = encode_dialog(&tok, &d, AssistantMask::LastTurn).unwrap();
    let n_all = all.assistant_mask.iter().filter(|&&m| m).count();
    let n_last = last.assistant_mask.iter().filter(|&&m| m).count();
    assert!(n_last < n_all && n_last > 0);
}

#[test]
fn packed_loss_equals_sum_of_unpacked_losses() {
    let tok = tokenizer();
    let (_vs, m) = model();
    let exs = examples(&tok);
    let (mut sum, mut n) = (0.0, 0);
    for e in &exs {
        let (s, k) = rows_nll_sum(&m, &pack(std::slice::from_ref(e), 4096, false));
        sum += s;
        n += k;
    }
    let packed_rows = pack(&exs, 4096, true);
    assert_eq!(packed_rows.len(), 1, "all three examples fit in one row");
    let (ps, pn) = rows_nll_sum(&m, &packed_rows);
    assert_eq!(pn, n);
    assert!((ps - sum).abs() < 1e-3 * sum.abs().max(1.0), "packed {ps} vs unpacked {sum}");
    // Without the block-diagonal mask and position reset the numbers would differ: pad rows
    // (no packing, right-padded batch of all three) must agree too.
    let (bs, bn) = rows_nll_sum(&m, &pack(&exs, 4096, false));
    assert_eq!(bn, n);
    assert!((bs - sum).abs() < 1e-3 * sum.abs().max(1.0));
}
