//! GAtt construction (Llama 2 Section 3.3): the instruction stays only in the first user turn of
//! what is trained, and the `last_turn` mask zeroes the loss on every earlier turn; bad dialog and
//! instruction files name the file, row and field.
use gatt::data::{gatt_records, read_dialogs, read_instructions, training_dialog};
use llama::{encode_dialog, AssistantMask, Role};
use std::path::Path;

fn strings(x: &[&str]) -> Vec<String> {
    x.iter().map(|s| s.to_string()).collect()
}

#[test]
fn instruction_only_in_the_first_user_turn_and_earlier_turns_masked() {
    let (tok, _) = llama::tokenizer::resolve(None, None).unwrap();
    let inst = "Always act as Napoleon from now.";
    let turns = strings(&["What is the capital of France?", "What is 5 plus 3?", "Spell cat backwards."]);
    let replies = strings(&["As Napoleon, I say: Paris.", "As Napoleon, I say: 8.", "As Napoleon, I say: tac."]);
    let records = gatt_records(inst, &turns, &replies);
    assert_eq!(records.len(), 3, "one record per turn");
    for (t, r) in records.iter().enumerate() {
        let users: Vec<&str> = r.messages.iter().filter(|m| m.role == Role::User).map(|m| m.content.as_str()).collect();
        assert_eq!(users.len(), t + 1);
        assert_eq!(users[0], format!("{inst} {}", turns[0]), "the instruction leads the first user turn");
        for (u, want) in users[1..].iter().zip(&turns[1..]) {
            assert_eq!(u, want, "no instruction in later user turns");
            assert!(!u.contains("Napoleon"));
        }
        assert_eq!(r.messages.last().unwrap().content, replies[t]);
        // The mask GAtt trains with: only the last reply (and its EOS) carries loss.
        let enc = encode_dialog(&tok, &r.messages, AssistantMask::LastTurn).unwrap();
        let trained: Vec<u32> = enc.ids.iter().zip(&enc.assistant_mask).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
        assert_eq!(*trained.last().unwrap(), tok.eos_id(), "the reply's EOS is trained");
        assert_eq!(tok.decode(&trained[..trained.len() - 1]).unwrap().trim(), replies[t], "turn {}: only the last reply is trained", t + 1);
        let all = encode_dialog(&tok, &r.messages, AssistantMask::AllTurns).unwrap();
        assert_eq!(all.ids, enc.ids);
        if t > 0 {
            assert!(all.num_assistant_tokens() > enc.num_assistant_tokens(), "earlier replies are masked out");
        }
    }
    // The evaluation prompt of turn 3 is the same dialog without its last reply.
    let prompt = training_dialog(inst, &turns, &replies[..2]);
    assert_eq!(prompt.last().unwrap().role, Role::User);
    assert_eq!(&prompt[..], &records[2].messages[..records[2].messages.len() - 1]);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_instruction_files_name_file_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("{\"text\": \"Be brief.\"}\n{\"text\": 5}\n", "row 2", "`text`"),
        ("{\"constraints\": [{\"kind\": \"language\", \"value\": \"Klingon\"}]}\n", "row 1", "`constraints`"),
        ("{\"text\": \"x\"}\n\n{\"constraints\": [{\"kind\": \"mood\", \"value\": \"happy\"}]}\n", "row 3", "`constraints[0]`"),
        ("{\"text\": \"x\", \"colour\": 1}\n", "row 1", "`colour`"),
        ("{}\n", "row 1", "`text`"),
        ("not json\n", "row 1", "invalid JSON"),
        (
            "{\"constraints\": [{\"kind\": \"hobby\", \"value\": \"chess\"}, {\"kind\": \"emoji\", \"value\": \"🙂\"}]}\n",
            "row 1",
            "at most one",
        ),
    ];
    for (i, (text, row, field)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("inst{i}.jsonl"), text);
        let e = read_instructions(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains(row) && e.contains(field), "case {i}: {e}");
    }
    let ok = write(
        dir.path(),
        "ok.jsonl",
        "{\"constraints\": [{\"kind\": \"figure\", \"value\": \"Napoleon\"}]}\n{\"text\": \"Speak like a pirate.\"}\n",
    );
    let list = read_instructions(&ok).unwrap();
    assert_eq!(list[0].text, "Always act as Napoleon from now.", "text rendered from the constraints");
    assert!(!list[1].checkable());
}

#[test]
fn bad_dialog_files_name_file_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("{\"turns\": [\"hi\"]}\n{\"turns\": []}\n", false, "row 2", "`turns`"),
        ("{\"turns\": [\"hi\", 3]}\n", false, "row 1", "`turns[1]`"),
        ("{\"prompts\": [\"hi\"]}\n", false, "row 1", "`prompts`"),
        ("{\"turns\": [\"hi\"], \"instruction\": {\"text\": 1}}\n", false, "row 1", "`instruction.text`"),
        ("{\"turns\": [\"hi\"], \"instruction\": {\"text\": \"Be brief.\"}}\n", true, "row 1", "`instruction`"),
        ("{\"turns\": [\"hi\"]}\n", true, "row 1", "`instruction`"),
    ];
    for (i, (text, eval, row, field)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("d{i}.jsonl"), text);
        let e = read_dialogs(&p, *eval).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains(row) && e.contains(field), "case {i}: {e}");
    }
    let p = write(
        dir.path(),
        "ok.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}, {\"role\": \"user\", \"content\": \"c\"}]}\n",
    );
    assert_eq!(read_dialogs(&p, false).unwrap()[0].turns, ["a", "c"]);
}
