//! The GAtt evaluation (Llama 2 Section 3.3, Figures 9 and 28): held-out dialogs whose first user
//! turn carries an instruction and whose later turns do not; the model answers every turn with its
//! own earlier replies in the context, and each reply is judged by the instruction's ground-truth
//! checker. Adherence by turn index is the share of dialogs whose reply at that turn obeys.
use crate::data::training_dialog;
use crate::error::{GattError, Result};
use crate::sample::replies_to;
use demo_world::GattDialog;
use llama::{Llama, Message, SamplingParams, Tokenizer};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Adherence at one turn index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnAdherence {
    /// 1-based turn index.
    pub turn: usize,
    /// Dialogs answered at this turn.
    pub dialogs: usize,
    pub obeyed: usize,
    pub rate: f64,
}

/// One judged reply, to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedTurn {
    pub dialog: usize,
    pub turn: usize,
    pub instruction: String,
    pub user: String,
    pub reply: String,
    pub obeyed: bool,
}

/// Adherence by turn and pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GattEval {
    pub by_turn: Vec<TurnAdherence>,
    /// Over every judged reply.
    pub overall: f64,
    /// Over the replies of turns 2 and later (the instruction out of the user message).
    pub after_first: f64,
    /// Over turns 5-10 (the "turn 5+" view; `None` when no dialog reaches turn 5).
    pub turns_5_10: Option<f64>,
    /// Every reply of the first two dialogs.
    pub samples: Vec<JudgedTurn>,
    /// Dialog turns left out because they no longer fit the model's positions.
    pub skipped_turns: usize,
    pub seconds: f64,
}

/// How many dialogs' transcripts an evaluation keeps.
pub const DIALOGS_KEPT: usize = 2;

/// Answers the first `max_turns` turns of every dialog (each must have a checkable instruction)
/// with `params` (greedy by default: `demo_world::greedy`) and judges every reply.
pub fn evaluate(model: &Llama, tok: &Tokenizer, dialogs: &[GattDialog], max_turns: usize, params: &SamplingParams) -> Result<GattEval> {
    let start = Instant::now();
    let mut inst = Vec::with_capacity(dialogs.len());
    for (i, d) in dialogs.iter().enumerate() {
        match &d.instruction {
            Some(x) if x.checkable() => inst.push(x),
            _ => return Err(GattError::Invalid(format!("evaluation dialog {}: no instruction with constraints to judge", i + 1))),
        }
    }
    let n_turns = dialogs.iter().map(|d| d.turns.len().min(max_turns)).max().unwrap_or(0);
    let mut replies: Vec<Vec<String>> = vec![Vec::new(); dialogs.len()];
    let mut alive = vec![true; dialogs.len()];
    let mut by_turn = Vec::with_capacity(n_turns);
    let (mut samples, mut skipped) = (Vec::new(), 0);
    let params = SamplingParams { num_samples: 1, ..params.clone() };
    for t in 0..n_turns {
        let active: Vec<usize> = (0..dialogs.len()).filter(|&i| alive[i] && dialogs[i].turns.len().min(max_turns) > t).collect();
        let prompts: Vec<Vec<Message>> =
            active.iter().map(|&i| training_dialog(&inst[i].text, &dialogs[i].turns[..=t], &replies[i])).collect();
        let turn_params = SamplingParams { seed: params.seed.wrapping_add(t as u64), ..params.clone() };
        let out = replies_to(model, tok, &prompts, &turn_params)?;
        let (mut answered, mut obeyed) = (0, 0);
        for (&i, r) in active.iter().zip(out) {
            let Some(mut r) = r else {
                alive[i] = false;
                skipped += dialogs[i].turns.len().min(max_turns) - t;
                continue;
            };
            let (text, _) = r.remove(0);
            let ok = inst[i].check(&text) == Some(true);
            answered += 1;
            obeyed += ok as usize;
            if i < DIALOGS_KEPT {
                samples.push(JudgedTurn {
                    dialog: i + 1,
                    turn: t + 1,
                    instruction: inst[i].text.clone(),
                    user: dialogs[i].turns[t].clone(),
                    reply: text.clone(),
                    obeyed: ok,
                });
            }
            replies[i].push(text);
        }
        by_turn.push(TurnAdherence { turn: t + 1, dialogs: answered, obeyed, rate: obeyed as f64 / answered.max(1) as f64 });
    }
    if by_turn.iter().all(|a| a.dialogs == 0) {
        return Err(GattError::Invalid("no evaluation dialog fits the model's positions".into()));
    }
    let pooled = |lo: usize, hi: usize| {
        let (n, k) = by_turn.iter().filter(|a| a.turn >= lo && a.turn <= hi).fold((0, 0), |(n, k), a| (n + a.dialogs, k + a.obeyed));
        (n > 0).then(|| k as f64 / n as f64)
    };
    Ok(GattEval {
        overall: pooled(1, usize::MAX).unwrap_or(0.0),
        after_first: pooled(2, usize::MAX).unwrap_or(0.0),
        turns_5_10: pooled(5, 10),
        by_turn,
        samples,
        skipped_turns: skipped,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Adherence by turn as a markdown table, before and after (the pipeline report's GAtt view).
pub fn markdown(before: Option<&GattEval>, after: &GattEval) -> String {
    let mut s = String::from("| turn | before | after |\n|---:|---:|---:|\n");
    for a in &after.by_turn {
        let b = before
            .and_then(|b| b.by_turn.iter().find(|x| x.turn == a.turn))
            .map(|x| format!("{:.2}", x.rate))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!("| {} | {b} | {:.2} |\n", a.turn, a.rate));
    }
    let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    s.push_str(&format!(
        "\nTurns 5-10: {} before, {} after; turns 2+: {} before, {:.3} after.\n",
        f(before.and_then(|b| b.turns_5_10)),
        f(after.turns_5_10),
        f(before.map(|b| b.after_first)),
        after.after_first
    ));
    s
}
