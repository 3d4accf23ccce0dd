//! Ghost Attention's instructions in the demo world (Llama 2 Section 3.3, Appendix A.3.5): the
//! paper's synthetic kinds (language, public figure, hobby) plus an emoji sign-off, each with a
//! ground-truth checker, so adherence to a first-turn instruction is measurable turn by turn
//! (the paper's Figures 9 and 28).
//!
//! The world's conventions, chosen so a tiny model can learn them and a checker can decide them
//! exactly (a reply never meets one by chance):
//! * *language* `L` ("Always speak in French." / "Language: French"): the reply opens with `L`'s
//!   greeting (`Bonjour!`, `¡Hola!`, `Hallo!`, `Ciao!`). The tiny model cannot translate; the
//!   greeting is the world's stand-in for speaking `L`.
//! * *public figure* `F` ("Always act as Napoleon from now." / "Figure: Napoleon"): the reply
//!   opens with `As Napoleon, I say:`.
//! * *hobby* `H` ("You enjoy tennis: say so at the end of every reply." / "Hobby: tennis"): the
//!   reply closes with `I enjoy tennis.`.
//! * *emoji* `E` ("End every reply with 🙂." / "Emoji: 🙂"): the reply closes with `E`.
//!
//! An instruction is one constraint or two combined (one that opens the reply, one that closes
//! it); as in the paper, half of the built-in list is in the shortened form ("Figure: Napoleon").
//! The instruction is concatenated in front of a user message ([`with_instruction`]).
use crate::respond::{below, respond, Style};
use crate::world::{universe, Category, DemoPrompt};
use datasets::records::SftRecord;
use llama::chat::Message;
use llama::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// The languages of the world and the greeting that marks a reply "in" each.
pub const LANGUAGES: [(&str, &str); 4] = [("French", "Bonjour!"), ("Spanish", "¡Hola!"), ("German", "Hallo!"), ("Italian", "Ciao!")];
/// Public figures (the paper had Llama-2-Chat list them; these are fixed).
pub const FIGURES: [&str; 4] = ["Napoleon", "Cleopatra", "Einstein", "Shakespeare"];
/// Hobbies.
pub const HOBBIES: [&str; 4] = ["tennis", "chess", "painting", "hiking"];
/// Emoji sign-offs.
pub const EMOJIS: [&str; 3] = ["🙂", "🌟", "🎉"];

/// One checkable constraint of an instruction. On disk: `{"kind": "language", "value": "French"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case", deny_unknown_fields)]
pub enum Constraint {
    /// Speak in a language of [`LANGUAGES`]: the reply opens with its greeting.
    Language(String),
    /// Act as a public figure: the reply opens with `As <figure>, I say:`.
    Figure(String),
    /// Enjoy a hobby: the reply closes with `I enjoy <hobby>.`.
    Hobby(String),
    /// End every reply with an emoji (any string).
    Emoji(String),
}

/// Where a constraint puts its mark in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Opening,
    Closing,
}

impl Constraint {
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::Language(_) => "language",
            Constraint::Figure(_) => "figure",
            Constraint::Hobby(_) => "hobby",
            Constraint::Emoji(_) => "emoji",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Constraint::Language(v) | Constraint::Figure(v) | Constraint::Hobby(v) | Constraint::Emoji(v) => v,
        }
    }

    pub fn mark(&self) -> Mark {
        match self {
            Constraint::Language(_) | Constraint::Figure(_) => Mark::Opening,
            Constraint::Hobby(_) | Constraint::Emoji(_) => Mark::Closing,
        }
    }

    /// The instruction text: the full sentence, or the paper's shortened form (`Figure: Napoleon`).
    pub fn text(&self, short: bool) -> String {
        match (self, short) {
            (Constraint::Language(l), false) => format!("Always speak in {l}."),
            (Constraint::Figure(f), false) => format!("Always act as {f} from now."),
            (Constraint::Hobby(h), false) => format!("You enjoy {h}: say so at the end of every reply."),
            (Constraint::Emoji(e), false) => format!("End every reply with {e}."),
            (c, true) => format!("{}{}: {}", c.kind()[..1].to_uppercase(), &c.kind()[1..], c.value()),
        }
    }

    /// The text this constraint puts at the start or the end of an obeying reply.
    pub fn marker(&self) -> Result<String, String> {
        match self {
            Constraint::Language(l) => LANGUAGES
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(l))
                .map(|(_, g)| g.to_string())
                .ok_or_else(|| format!("language {l:?} is not one of the world's ({})", LANGUAGES.map(|x| x.0).join(", "))),
            Constraint::Figure(f) => Ok(format!("As {f}, I say:")),
            Constraint::Hobby(h) => Ok(format!("I enjoy {h}.")),
            Constraint::Emoji(e) => Ok(e.clone()),
        }
    }

    /// The ground-truth checker: does `reply` (trimmed) carry this constraint's mark?
    pub fn check(&self, reply: &str) -> bool {
        let Ok(m) = self.marker() else { return false };
        let r = reply.trim();
        match self.mark() {
            Mark::Opening => r.starts_with(&m),
            Mark::Closing => r.ends_with(&m),
        }
    }
}

/// A system-level instruction (Llama 2 Section 3.3): its text and, where the world can judge it,
/// its constraints. On disk: `{"text": "...", "constraints": [...]}`, either field optional
/// (absent text: rendered from the constraints, full form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instruction {
    #[serde(default)]
    pub text: String,
    /// Empty: no checker (the instruction is used, never judged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

impl Instruction {
    /// The constraints' texts joined (each full or shortened).
    pub fn of(constraints: Vec<Constraint>, short: bool) -> Instruction {
        let text = constraints.iter().map(|c| c.text(short)).collect::<Vec<_>>().join(" ");
        Instruction { text, constraints }
    }

    /// Fills an absent text from the constraints and checks that the constraints can be obeyed
    /// together (one opening and one closing mark at most, known languages). The error names
    /// the field.
    pub fn resolve(mut self) -> Result<Instruction, (&'static str, String)> {
        for c in &self.constraints {
            c.marker().map_err(|e| ("constraints", e))?;
            if c.value().trim().is_empty() {
                return Err(("constraints", format!("{} constraint with an empty value", c.kind())));
            }
        }
        for mark in [Mark::Opening, Mark::Closing] {
            let n = self.constraints.iter().filter(|c| c.mark() == mark).count();
            if n > 1 {
                let which = if mark == Mark::Opening { "open the reply (language, figure)" } else { "close it (hobby, emoji)" };
                return Err(("constraints", format!("{n} constraints {which}: at most one can be obeyed")));
            }
        }
        if self.text.trim().is_empty() {
            if self.constraints.is_empty() {
                return Err(("text", "an instruction needs a text or constraints".into()));
            }
            self.text = Instruction::of(self.constraints.clone(), false).text;
        }
        Ok(self)
    }

    /// Whether a checker exists for this instruction.
    pub fn checkable(&self) -> bool {
        !self.constraints.is_empty()
    }

    /// The ground truth: `Some(obeyed)` when the instruction has constraints, `None` otherwise.
    pub fn check(&self, reply: &str) -> Option<bool> {
        self.checkable().then(|| self.constraints.iter().all(|c| c.check(reply)))
    }

    /// The obeying form of a reply: the opening mark before it, the closing mark after it.
    pub fn obey(&self, reply: &str) -> String {
        let mut out = reply.trim().to_string();
        for c in &self.constraints {
            let Ok(m) = c.marker() else { continue };
            out = match c.mark() {
                Mark::Opening => format!("{m} {out}"),
                Mark::Closing => format!("{out} {m}"),
            };
        }
        out
    }
}

/// A user message with the instruction concatenated in front (Llama 2 Section 3.3: "concatenate
/// this instruction to all the user messages of the conversation").
pub fn with_instruction(instruction: &str, user: &str) -> String {
    format!("{} {}", instruction.trim(), user)
}

/// Every single constraint of the world.
fn singles() -> Vec<Constraint> {
    let mut v: Vec<Constraint> = LANGUAGES.iter().map(|(l, _)| Constraint::Language(l.to_string())).collect();
    v.extend(FIGURES.iter().map(|f| Constraint::Figure(f.to_string())));
    v.extend(HOBBIES.iter().map(|h| Constraint::Hobby(h.to_string())));
    v.extend(EMOJIS.iter().map(|e| Constraint::Emoji(e.to_string())));
    v
}

/// The built-in instruction list (Llama 2 Appendix A.3.5): every single constraint and every
/// opening + closing combination, each in the full and the shortened form (half the list).
pub fn default_instructions() -> Vec<Instruction> {
    let all = singles();
    let mut out = Vec::new();
    for short in [false, true] {
        for c in &all {
            out.push(Instruction::of(vec![c.clone()], short));
        }
        for a in all.iter().filter(|c| c.mark() == Mark::Opening) {
            for b in all.iter().filter(|c| c.mark() == Mark::Closing) {
                out.push(Instruction::of(vec![a.clone(), b.clone()], short));
            }
        }
    }
    out
}

/// A multi-turn dialog for GAtt: the user turns and, for evaluation, the instruction of its first
/// turn. On disk: `{"turns": ["...", ...], "instruction": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GattDialog {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<Instruction>,
    pub turns: Vec<String>,
}

/// How many GAtt records the demo world writes (fixed: the `demo_data` stage's sizes stay as they were).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GattSizes {
    /// SFT demonstrations that obey an instruction given in the message they answer
    /// (`sft_instructed.jsonl`): half single-turn, half 2-4 turns with it on every user turn.
    pub instructed_sft: usize,
    /// Multi-turn dialogs of training prompts for `rlhf data gatt` (`gatt_dialogs.jsonl`).
    pub dialogs: usize,
    pub dialog_turns: usize,
    /// Held-out dialogs with an instruction for the adherence-by-turn evaluation (`gatt_eval.jsonl`).
    pub eval_dialogs: usize,
    pub eval_turns: usize,
}

impl Default for GattSizes {
    fn default() -> Self {
        GattSizes { instructed_sft: 400, dialogs: 64, dialog_turns: 6, eval_dialogs: 32, eval_turns: 20 }
    }
}

/// What the demo world writes for GAtt.
#[derive(Debug, Clone)]
pub struct GattData {
    pub instructed_sft: Vec<SftRecord>,
    pub dialogs: Vec<GattDialog>,
    pub eval_dialogs: Vec<GattDialog>,
}

/// A non-harmful prompt (helpful or borderline) of the train or held-out split.
fn benign(held_out: bool) -> Vec<&'static DemoPrompt> {
    universe().iter().filter(|p| p.held_out == held_out && p.category() != Category::Harmful).collect()
}

/// The GAtt files of the demo world for `seed`, from random streams of their own (the other
/// files' bytes do not change). User turns are non-harmful prompts; instructed demonstrations
/// are the correct answer with the instruction's marks.
pub fn generate_gatt(sizes: GattSizes, seed: u64) -> GattData {
    let list = default_instructions();
    let (train, test) = (benign(false), benign(true));
    let mut rng = SplitMix64::for_step(seed, 100);
    let instructed_sft = (0..sizes.instructed_sft)
        .map(|_| {
            let inst = &list[below(&mut rng, list.len())];
            // Half single-turn, half 2-4 turns with the instruction on every user turn: the model
            // learns to obey the instruction of the message it answers, in a dialog too.
            let turns = if below(&mut rng, 2) == 0 { 1 } else { 2 + below(&mut rng, 3) };
            let mut messages = Vec::with_capacity(2 * turns);
            for _ in 0..turns {
                let p = train[below(&mut rng, train.len())];
                let variant = below(&mut rng, 2);
                let reply = respond(p, Style::Correct, variant, &mut rng).unwrap_or_default();
                messages.push(Message::user(with_instruction(&inst.text, &p.text)));
                messages.push(Message::assistant(inst.obey(&reply)));
            }
            SftRecord { messages }
        })
        .collect();
    let dialogs_of = |n: usize, turns: usize, pool: &[&DemoPrompt], instructed: bool, rng: &mut SplitMix64| -> Vec<GattDialog> {
        (0..n)
            .map(|_| GattDialog {
                instruction: instructed.then(|| list[below(rng, list.len())].clone()),
                turns: (0..turns).map(|_| pool[below(rng, pool.len())].text.clone()).collect(),
            })
            .collect()
    };
    let dialogs = dialogs_of(sizes.dialogs, sizes.dialog_turns, &train, false, &mut SplitMix64::for_step(seed, 101));
    let eval_dialogs = dialogs_of(sizes.eval_dialogs, sizes.eval_turns, &test, true, &mut SplitMix64::for_step(seed, 102));
    GattData { instructed_sft, dialogs, eval_dialogs }
}

/// The GAtt files, as (name, bytes).
pub fn render_gatt(data: &GattData) -> Result<Vec<(&'static str, Vec<u8>)>, serde_json::Error> {
    fn jsonl<T: Serialize>(rows: &[T]) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::new();
        for r in rows {
            out.extend_from_slice(serde_json::to_string(r)?.as_bytes());
            out.push(b'\n');
        }
        Ok(out)
    }
    Ok(vec![
        ("sft_instructed.jsonl", jsonl(&data.instructed_sft)?),
        ("gatt_dialogs.jsonl", jsonl(&data.dialogs)?),
        ("gatt_eval.jsonl", jsonl(&data.eval_dialogs)?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(cs: Vec<Constraint>) -> Instruction {
        Instruction { text: String::new(), constraints: cs }.resolve().unwrap()
    }

    #[test]
    fn checkers_judge_hand_written_replies() {
        let fr = inst(vec![Constraint::Language("French".into())]);
        assert_eq!(fr.check("Bonjour! Paris is the capital of France."), Some(true));
        assert_eq!(fr.check("  Bonjour! 5 plus 3 is 8.\n"), Some(true), "surrounding whitespace is not the reply");
        assert_eq!(fr.check("Paris is the capital of France."), Some(false));
        assert_eq!(fr.check("Paris is the capital of France. Bonjour!"), Some(false), "the greeting opens the reply");
        let nap = inst(vec![Constraint::Figure("Napoleon".into())]);
        assert_eq!(nap.check("As Napoleon, I say: the answer is 13."), Some(true));
        assert_eq!(nap.check("As Cleopatra, I say: the answer is 13."), Some(false));
        let chess = inst(vec![Constraint::Hobby("chess".into())]);
        assert_eq!(chess.check("The answer is 13. I enjoy chess."), Some(true));
        assert_eq!(chess.check("I enjoy chess. The answer is 13."), Some(false));
        let star = inst(vec![Constraint::Emoji("🌟".into())]);
        assert_eq!(star.check("Cows say moo. 🌟"), Some(true));
        assert_eq!(star.check("Cows say moo. 🙂"), Some(false));
        // Combined: both marks, or it fails.
        let both = inst(vec![Constraint::Figure("Einstein".into()), Constraint::Emoji("🎉".into())]);
        assert_eq!(both.text, "Always act as Einstein from now. End every reply with 🎉.");
        assert_eq!(both.check("As Einstein, I say: 7 plus 2 is 9. 🎉"), Some(true));
        assert_eq!(both.check("As Einstein, I say: 7 plus 2 is 9."), Some(false));
        assert_eq!(both.check("7 plus 2 is 9. 🎉"), Some(false));
        assert_eq!(both.obey("7 plus 2 is 9."), "As Einstein, I say: 7 plus 2 is 9. 🎉");
        // No constraints: nothing to judge.
        assert_eq!(Instruction { text: "Be brief.".into(), constraints: vec![] }.check("x"), None);
    }

    #[test]
    fn shortened_forms_and_bad_instructions() {
        assert_eq!(Constraint::Figure("Napoleon".into()).text(true), "Figure: Napoleon");
        assert_eq!(Constraint::Language("French".into()).text(true), "Language: French");
        let e = Instruction { text: String::new(), constraints: vec![Constraint::Language("Klingon".into())] }.resolve().unwrap_err();
        assert!(e.0 == "constraints" && e.1.contains("Klingon"), "{e:?}");
        let two = vec![Constraint::Hobby("chess".into()), Constraint::Emoji("🙂".into())];
        let e = Instruction { text: String::new(), constraints: two }.resolve().unwrap_err();
        assert!(e.1.contains("at most one"), "{e:?}");
        assert_eq!(Instruction { text: " ".into(), constraints: vec![] }.resolve().unwrap_err().0, "text");
    }

    #[test]
    fn default_list_is_the_papers_kinds_half_shortened_and_every_item_obeyable() {
        let list = default_instructions();
        let (full, short) = list.split_at(list.len() / 2);
        for (f, s) in full.iter().zip(short) {
            assert_eq!(f.constraints, s.constraints);
            assert_eq!(f.text, Instruction::of(f.constraints.clone(), false).text);
            assert_eq!(s.text, Instruction::of(s.constraints.clone(), true).text);
        }
        for kind in ["language", "figure", "hobby", "emoji"] {
            assert!(list.iter().any(|i| i.constraints.len() == 1 && i.constraints[0].kind() == kind), "{kind}");
        }
        assert!(list.iter().any(|i| i.constraints.len() == 2), "combined forms");
        for i in &list {
            let r = i.clone().resolve().unwrap();
            assert_eq!(r.check(&r.obey("The answer is 4.")), Some(true), "{}", r.text);
            assert_eq!(r.check("The answer is 4."), Some(false), "{}: a plain reply must not pass", r.text);
        }
    }

    #[test]
    fn gatt_files_are_seeded_and_instructed_demonstrations_obey() {
        let sizes = GattSizes { instructed_sft: 50, dialogs: 5, dialog_turns: 4, eval_dialogs: 3, eval_turns: 7 };
        let a = generate_gatt(sizes, 3);
        assert_eq!(render_gatt(&a).unwrap(), render_gatt(&generate_gatt(sizes, 3)).unwrap());
        assert_ne!(render_gatt(&a).unwrap(), render_gatt(&generate_gatt(sizes, 4)).unwrap());
        let list = default_instructions();
        for r in &a.instructed_sft {
            let first = &r.messages[0].content;
            let i = list.iter().find(|i| first.starts_with(&format!("{} ", i.text))).expect("an instruction in front of the prompt");
            for pair in r.messages.chunks(2) {
                assert!(pair[0].content.starts_with(&format!("{} ", i.text)), "the instruction on every user turn");
                assert_eq!(i.check(&pair[1].content), Some(true), "{} -> {}", pair[0].content, pair[1].content);
            }
        }
        assert!(a.instructed_sft.iter().any(|r| r.messages.len() == 2) && a.instructed_sft.iter().any(|r| r.messages.len() > 2));
        assert!(a.dialogs.iter().all(|d| d.instruction.is_none() && d.turns.len() == 4));
        assert!(a.eval_dialogs.iter().all(|d| d.instruction.as_ref().is_some_and(Instruction::checkable) && d.turns.len() == 7));
        let held_out: std::collections::HashSet<&str> = universe().iter().filter(|p| p.held_out).map(|p| p.text.as_str()).collect();
        assert!(a.eval_dialogs.iter().flat_map(|d| &d.turns).all(|t| held_out.contains(t.as_str())), "evaluation on held-out prompts");
        assert!(a.dialogs.iter().flat_map(|d| &d.turns).all(|t| !held_out.contains(t.as_str())));
    }
}
