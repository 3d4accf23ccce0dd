//! GAtt's files and its construction (Llama 2 Section 3.3): the instruction concatenated to every
//! user turn while sampling ([`sampling_prompt`]), kept only in the first user turn for training
//! ([`training_dialog`]), one SFT record per turn trained on its last reply only ([`gatt_records`],
//! the `last_turn` mask: zero loss on every token of the earlier turns, assistant replies included).
use crate::error::{GattError, Result};
use datasets::SftRecord;
use demo_world::{with_instruction, GattDialog, Instruction};
use llama::Message;
use serde_json::{Map, Value};
use std::path::Path;

/// The prompt that samples reply `replies.len() + 1`: the instruction concatenated to every user
/// turn so far, the earlier replies between them.
pub fn sampling_prompt(instruction: &str, turns: &[String], replies: &[String]) -> Vec<Message> {
    let t = replies.len();
    let mut m = Vec::with_capacity(2 * t + 1);
    for (i, u) in turns[..=t].iter().enumerate() {
        m.push(Message::user(with_instruction(instruction, u)));
        if i < t {
            m.push(Message::assistant(replies[i].clone()));
        }
    }
    m
}

/// The dialog as trained (and as evaluated): the instruction in the first user turn only.
/// With `replies.len() == turns.len() - 1` it is the prompt of the last turn.
pub fn training_dialog(instruction: &str, turns: &[String], replies: &[String]) -> Vec<Message> {
    let mut m = Vec::with_capacity(2 * turns.len());
    for (i, u) in turns.iter().enumerate() {
        m.push(Message::user(if i == 0 { with_instruction(instruction, u) } else { u.clone() }));
        if let Some(r) = replies.get(i) {
            m.push(Message::assistant(r.clone()));
        }
    }
    m
}

/// One SFT record per turn `t` (the dialog up to reply `t`, instruction in the first user turn
/// only), to be trained with the `last_turn` mask so each record's loss is on reply `t` alone:
/// every turn is trained once, and never with the instruction in view except in the first.
pub fn gatt_records(instruction: &str, turns: &[String], replies: &[String]) -> Vec<SftRecord> {
    (1..=replies.len().min(turns.len())).map(|t| SftRecord { messages: training_dialog(instruction, &turns[..t], &replies[..t]) }).collect()
}

fn row_err(path: &Path, row: usize, field: &str, msg: impl Into<String>) -> GattError {
    GattError::Row { path: path.to_path_buf(), row, field: field.to_string(), msg: msg.into() }
}

/// The non-empty lines of a JSONL file, each parsed as a JSON object, with their 1-based rows.
fn objects(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| GattError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let row = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| row_err(path, row, "(row)", format!("invalid JSON: {e}")))?;
        match v {
            Value::Object(o) => out.push((row, o)),
            _ => return Err(row_err(path, row, "(row)", "expected a JSON object")),
        }
    }
    if out.is_empty() {
        return Err(GattError::File { path: path.to_path_buf(), msg: "no rows".into() });
    }
    Ok(out)
}

fn check_fields(path: &Path, row: usize, o: &Map<String, Value>, known: &[&str]) -> Result<()> {
    match o.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(row_err(path, row, k, format!("unknown field (expected {})", known.join(", ")))),
        None => Ok(()),
    }
}

/// An instruction object (`{"text", "constraints"}`) with the field of an error prefixed by `at`.
fn instruction_of(path: &Path, row: usize, at: &str, v: &Value) -> Result<Instruction> {
    let Value::Object(o) = v else {
        return Err(row_err(path, row, at.trim_end_matches('.'), "expected an object {\"text\", \"constraints\"}"));
    };
    check_fields(path, row, o, &["text", "constraints"])?;
    let text = match o.get("text") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(row_err(path, row, &format!("{at}text"), "expected a string")),
    };
    let constraints = match o.get("constraints") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, c)| {
                serde_json::from_value(c.clone()).map_err(|e| {
                    row_err(
                        path,
                        row,
                        &format!("{at}constraints[{i}]"),
                        format!("{e} (expected {{\"kind\": language|figure|hobby|emoji, \"value\": string}})"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?,
        Some(_) => return Err(row_err(path, row, &format!("{at}constraints"), "expected an array")),
    };
    Instruction { text, constraints }.resolve().map_err(|(field, msg)| row_err(path, row, &format!("{at}{field}"), msg))
}

/// A user instruction file: one `{"text": ..., "constraints": [...]}` a row (either optional; the
/// text is rendered from the constraints when absent).
pub fn read_instructions(path: &Path) -> Result<Vec<Instruction>> {
    objects(path)?.iter().map(|(row, o)| instruction_of(path, *row, "", &Value::Object(o.clone()))).collect()
}

/// A dialogs file: `{"turns": [user, ...], "instruction": {...}}` (instruction optional) or an SFT
/// record `{"messages": [...]}` whose user messages are the turns (its replies are resampled).
/// With `need_checker`, every row must carry an instruction with constraints (evaluation).
pub fn read_dialogs(path: &Path, need_checker: bool) -> Result<Vec<GattDialog>> {
    let mut out = Vec::new();
    for (row, o) in objects(path)? {
        check_fields(path, row, &o, &["turns", "instruction", "messages"])?;
        let turns: Vec<String> = match (o.get("turns"), o.get("messages")) {
            (Some(_), Some(_)) => return Err(row_err(path, row, "messages", "give `turns` or `messages`, not both")),
            (None, None) => return Err(row_err(path, row, "turns", "missing (a list of user messages)")),
            (Some(Value::Array(items)), None) => items
                .iter()
                .enumerate()
                .map(|(i, t)| match t {
                    Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                    _ => Err(row_err(path, row, &format!("turns[{i}]"), "expected a non-empty string")),
                })
                .collect::<Result<_>>()?,
            (Some(_), None) => return Err(row_err(path, row, "turns", "expected an array of strings")),
            (None, Some(m)) => {
                let messages: Vec<Message> =
                    serde_json::from_value(m.clone()).map_err(|e| row_err(path, row, "messages", e.to_string()))?;
                messages.into_iter().filter(|m| m.role == llama::Role::User).map(|m| m.content).collect()
            }
        };
        if turns.is_empty() {
            return Err(row_err(path, row, "turns", "no user turn"));
        }
        let instruction = o.get("instruction").map(|v| instruction_of(path, row, "instruction.", v)).transpose()?;
        if need_checker && !instruction.as_ref().is_some_and(Instruction::checkable) {
            return Err(row_err(path, row, "instruction", "evaluation needs an instruction with `constraints` (its ground-truth checker)"));
        }
        out.push(GattDialog { instruction, turns });
    }
    Ok(out)
}

/// Writes JSONL rows atomically (temp + rename).
pub fn write_jsonl<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(serde_json::to_string(r)?.as_bytes());
        out.push(b'\n');
    }
    Ok(llama::checkpoint::write_atomic(path, &out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llama::Role;

    #[test]
    fn sampling_prompt_has_the_instruction_in_every_user_turn() {
        let turns: Vec<String> = ["a?", "b?", "c?"].map(String::from).to_vec();
        let replies: Vec<String> = ["A.", "B."].map(String::from).to_vec();
        let m = sampling_prompt("Hobby: chess", &turns, &replies);
        let users: Vec<&str> = m.iter().filter(|m| m.role == Role::User).map(|m| m.content.as_str()).collect();
        assert_eq!(users, ["Hobby: chess a?", "Hobby: chess b?", "Hobby: chess c?"]);
        assert_eq!(m.last().unwrap().role, Role::User);
        assert_eq!(m[1].content, "A.");
    }
}
