//! The Llama-2 tokenizer and chat format against an independent implementation:
//! `tests/fixtures/chat_ids.json`, written by `tools/chat_fixtures.mjs` from llama-tokenizer-js
//! (a JS port of the Llama-2 SentencePiece BPE) and Meta's `chat_completion` algorithm.
//!
//! The tokenizer is built from `.cache/llama-tokenizer-js/llama-tokenizer.js`
//! (`scripts/fetch_tokenizer.sh`), which also tests `tokenizer_build`; failing that, it is loaded
//! from `llama_text::tokenizer::default_tokenizer_path()`. With neither, the tests fail (run scripts/setup).
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_text::chat::{encode_dialog, encode_prompt, AssistantMask, Message, Role};
use llama_text::tokenizer::{default_tokenizer_path, Tokenizer};
use llama_text::tokenizer_build::build_tokenizer_json_from_file;
use llama_text::TextError;
use serde::Deserialize;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tokenizer, built once per test binary. Without a source the tests fail: a tokenizer test
/// that passes without a tokenizer checks nothing.
fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let js = repo_root().join(".cache/llama-tokenizer-js/llama-tokenizer.js");
        if js.is_file() {
            let json = build_tokenizer_json_from_file(&js).expect("build tokenizer.json");
            return Tokenizer::from_json(&json).expect("load built tokenizer.json");
        }
        let path = default_tokenizer_path().filter(|p| p.is_file()).unwrap_or_else(|| {
            panic!(
                "no Llama-2 tokenizer: neither {} nor assets/tokenizer/tokenizer.json exists; run scripts/setup \
                 (or scripts/fetch_tokenizer.sh and `rlhf tokenizer build`)",
                js.display()
            )
        });
        Tokenizer::from_file(&path).expect("load default tokenizer")
    })
}

#[derive(Deserialize)]
struct Fixtures {
    dialogs: Vec<DialogCase>,
    texts: Vec<TextCase>,
}

#[derive(Deserialize)]
struct DialogCase {
    name: String,
    dialog: Vec<Message>,
    ids: Vec<u32>,
    /// AllTurns mask for dialogs ending with an assistant reply; `None` for prompts.
    assistant_mask: Option<Vec<bool>>,
}

#[derive(Deserialize)]
struct TextCase {
    name: String,
    text: String,
    ids: Vec<u32>,
}

fn fixtures() -> Fixtures {
    let path = repo_root().join("tests/fixtures/chat_ids.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mask_of(tok: &Tokenizer, dialog: &[Message], mask: AssistantMask) -> (Vec<u32>, Vec<bool>) {
    let t = encode_dialog(tok, dialog, mask).unwrap();
    assert_eq!(t.ids.len(), t.assistant_mask.len());
    (t.ids, t.assistant_mask)
}

fn masked_ids(ids: &[u32], mask: &[bool]) -> Vec<u32> {
    ids.iter().zip(mask).filter(|(_, &m)| m).map(|(&id, _)| id).collect()
}

#[test]
fn vocabulary_basics() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 32000);
    assert_eq!((tok.bos_id(), tok.eos_id()), (1, 2));
    assert_eq!(tok.id_to_token(0).as_deref(), Some("<unk>"));
    assert_eq!(tok.id_to_token(13).as_deref(), Some("<0x0A>"));
    assert_eq!(tok.id_to_token(29871).as_deref(), Some("\u{2581}"));
    assert_eq!(tok.token_to_id("\u{2581}Hello"), Some(15043));
}

#[test]
fn text_fixtures_match_and_round_trip() {
    let tok = tokenizer();
    let fx = fixtures();
    assert!(fx.texts.len() >= 20, "expected the package's and our text cases");
    for case in &fx.texts {
        let ids = tok.encode(&case.text, true, false).unwrap();
        assert_eq!(ids, case.ids, "text case {} {:?}", case.name, case.text);
        // As in SentencePiece, a literal "▁" in the text is indistinguishable from a space.
        let want = case.text.replace('\u{2581}', " ");
        assert_eq!(tok.decode(&ids).unwrap(), want, "decode of text case {}", case.name);
    }
}

#[test]
fn dialog_fixtures_match() {
    let tok = tokenizer();
    let fx = fixtures();
    assert!(fx.dialogs.len() >= 20);
    for case in &fx.dialogs {
        let (ids, mask) = mask_of(tok, &case.dialog, AssistantMask::AllTurns);
        assert_eq!(ids, case.ids, "dialog {}", case.name);
        match &case.assistant_mask {
            Some(want) => assert_eq!(&mask, want, "assistant mask of dialog {}", case.name),
            None => {
                assert!(mask.iter().all(|&m| !m), "prompt {} must have no assistant ids", case.name);
                assert_eq!(encode_prompt(tok, &case.dialog).unwrap(), case.ids, "prompt {}", case.name);
            }
        }
    }
}

#[test]
fn package_reference_ids() {
    let tok = tokenizer();
    assert_eq!(tok.encode("Hello world!", true, false).unwrap(), [1, 15043, 3186, 29991]);
    assert_eq!(tok.encode("[INST]", true, false).unwrap(), [1, 518, 25580, 29962]);
    assert_eq!(tok.encode("\n", true, true).unwrap(), [1, 29871, 13, 2]);
    assert_eq!(tok.encode("", true, false).unwrap(), [1]);
    assert_eq!(tok.encode("", false, false).unwrap(), Vec::<u32>::new());
}

#[test]
fn special_pieces_in_text_are_text() {
    let tok = tokenizer();
    let ids = tok.encode("a </s> <s>", false, false).unwrap();
    assert!(!ids.contains(&1) && !ids.contains(&2), "{ids:?}");
    // decode skips BOS/EOS ids but keeps the text "</s>".
    assert_eq!(tok.decode(&[1, 15043, 2]).unwrap(), "Hello");
    assert_eq!(tok.decode(&ids).unwrap(), "a </s> <s>");
    assert!(tok.decode(&[32000]).is_err());
}

#[test]
fn offsets_are_bytes_into_the_text() {
    let tok = tokenizer();
    let text = "é 🦙 ok";
    let (ids, offsets) = tok.encode_with_offsets(text).unwrap();
    assert_eq!(ids.len(), offsets.len());
    for &(s, e) in &offsets {
        assert!(s <= e && e <= text.len() && text.is_char_boundary(s) && text.is_char_boundary(e));
    }
    // The llama is byte fallback: four ids, each covering the whole 4-byte character.
    let llama = text.find('🦙').unwrap();
    let llama_ids: Vec<_> = offsets.iter().filter(|o| o.0 == llama).collect();
    assert_eq!(llama_ids.len(), 4, "{ids:?} {offsets:?}");
    assert!(llama_ids.iter().all(|o| o.1 == llama + 4));
}

#[test]
fn two_turn_assistant_mask() {
    let tok = tokenizer();
    let dialog = [
        Message::system("Be brief."),
        Message::user("Hi there"),
        Message::assistant("Hello! How can I help?"),
        Message::user("Say yes"),
        Message::assistant(" Yes "),
    ];
    let (ids, mask) = mask_of(tok, &dialog, AssistantMask::AllTurns);

    // Pair 1: "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! How can I help? "
    let p1_prompt = tok.encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST]", true, false).unwrap();
    // The reply, as SentencePiece sees it standalone: its leading space is the dummy prefix.
    let r1 = tok.encode("Hello! How can I help? ", false, true).unwrap();
    let p2_prompt = tok.encode("[INST] Say yes [/INST]", true, false).unwrap();
    let r2 = tok.encode("Yes ", false, true).unwrap();
    assert_eq!(r1, [15043, 29991, 1128, 508, 306, 1371, 29973, 29871, 2]);
    assert_eq!(r2, [3869, 29871, 2]);

    let expected_ids: Vec<u32> = [&p1_prompt[..], &r1, &p2_prompt, &r2].concat();
    assert_eq!(ids, expected_ids);
    let expected_mask: Vec<bool> = [(&p1_prompt, false), (&r1, true), (&p2_prompt, false), (&r2, true)]
        .iter()
        .flat_map(|(part, m)| std::iter::repeat_n(*m, part.len()))
        .collect();
    assert_eq!(mask, expected_mask);
    // Both EOS ids are trained, neither BOS is.
    for (i, &id) in ids.iter().enumerate() {
        match id {
            2 => assert!(mask[i], "EOS at {i} must be masked in"),
            1 => assert!(!mask[i], "BOS at {i} must be masked out"),
            _ => {}
        }
    }
    // Decoded together, the second reply keeps its leading space (only the first "▁" is dropped).
    assert_eq!(tok.decode(&masked_ids(&ids, &mask)).unwrap(), "Hello! How can I help?  Yes ");

    // GAtt: only the last reply is trained.
    let (last_ids, last_mask) = mask_of(tok, &dialog, AssistantMask::LastTurn);
    assert_eq!(last_ids, ids);
    let tail = r2.len();
    assert!(last_mask[..ids.len() - tail].iter().all(|&m| !m));
    assert!(last_mask[ids.len() - tail..].iter().all(|&m| m));
    assert_eq!(masked_ids(&last_ids, &last_mask), r2);
}

#[test]
fn reply_mask_equals_standalone_reply_on_fixtures() {
    // For every complete fixture dialog, the masked ids are exactly each stripped reply encoded
    // on its own (dummy prefix = the space after [/INST]) plus EOS.
    let tok = tokenizer();
    for case in fixtures().dialogs.iter().filter(|c| c.assistant_mask.is_some()) {
        let (ids, mask) = mask_of(tok, &case.dialog, AssistantMask::AllTurns);
        let want: Vec<u32> = case
            .dialog
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .flat_map(|m| {
                let reply = format!("{} ", m.content.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)));
                tok.encode(&reply, false, true).unwrap()
            })
            .collect();
        assert_eq!(masked_ids(&ids, &mask), want, "dialog {}", case.name);
    }
}

#[test]
fn prompt_dialogs_have_no_mask_and_prompts_need_a_user_last() {
    let tok = tokenizer();
    let prompt = [Message::user("a"), Message::assistant("b"), Message::user("c")];
    for kind in [AssistantMask::AllTurns, AssistantMask::LastTurn] {
        let t = encode_dialog(tok, &prompt, kind).unwrap();
        assert!(t.assistant_mask.iter().all(|&m| !m));
        assert_eq!(t.num_assistant_tokens(), 0);
    }
    let err = encode_prompt(tok, &prompt[..2]).unwrap_err();
    assert!(matches!(err, TextError::Chat(_)), "{err}");
    assert!(err.to_string().contains("last message must be from user, got assistant"), "{err}");
}

#[test]
fn role_alternation_errors() {
    let tok = tokenizer();
    let cases: [(&[Message], &str); 5] = [
        (&[], "empty dialog"),
        (&[Message::system("s")], "only a system message"),
        (&[Message::assistant("a"), Message::user("u")], "message 0 has role assistant, expected user"),
        (&[Message::user("u"), Message::user("u")], "message 1 has role user, expected assistant"),
        (
            &[Message::system("s"), Message::user("u"), Message::assistant("a"), Message::system("t")],
            "message 3 has role system, expected user",
        ),
    ];
    for (dialog, want) in cases {
        let err = encode_dialog(tok, dialog, AssistantMask::AllTurns).unwrap_err();
        assert!(matches!(err, TextError::Chat(_)), "{err}");
        assert!(err.to_string().contains(want), "{err} should contain {want:?}");
    }
}
