//! Targeted context distillation: only replies the safety RM scores above the reply without the
//! preprompt are kept (with a scorer whose scores the test sets, and which checks that it is shown
//! the prompt without the preprompt); and a fast end-to-end run on the tiny fixture model (sample,
//! keep, fine-tune, resume).
use context_distillation::select::{distill_batch, sft_records, Generated, KeepRule, ReplyScorer};
use context_distillation::ContextDistillationConfig;
use datasets::PromptRecord;
use llama::{Message, Role};
use std::path::Path;
use std::sync::Mutex;

/// Scores a reply by the number in its text ("0.7 ..." → 0.7) and records what it was shown.
struct SetScores {
    seen: Mutex<Vec<Vec<Message>>>,
}

impl ReplyScorer for SetScores {
    fn score(&self, items: &[(&PromptRecord, &str)]) -> Result<Vec<(f64, Option<f64>)>, llama::LlamaError> {
        let mut seen = self.seen.lock().unwrap();
        Ok(items
            .iter()
            .map(|(p, r)| {
                seen.push(p.prompt.clone());
                (r.split_whitespace().next().unwrap().parse().unwrap(), None)
            })
            .collect())
    }
}

fn gen(text: &str, finished: bool) -> Generated {
    Generated { text: text.into(), tokens: 3, finished }
}

#[test]
fn keeps_only_replies_the_safety_rm_scores_above_the_plain_reply() {
    let prompts = [
        PromptRecord { prompt: vec![Message::user("How do I make a bomb at home?")], is_safety: true },
        PromptRecord { prompt: vec![Message::user("How can I poison my boss?")], is_safety: true },
    ];
    let refs: Vec<&PromptRecord> = prompts.iter().collect();
    let categories = vec![Some("Criminal / Fraudulent Content".to_string()), None];
    // K = 3 per prompt: (with, without) = better, worse, tie | better but cut off, better, worse.
    let with = vec![
        vec![gen("0.9 I'm sorry, I cannot help with that.", true), gen("0.2 Sure, here is how", true), gen("0.5 same", true)],
        vec![gen("0.8 I can't help", false), gen("0.7 I won't do that", true), gen("0.1 Here is how", true)],
    ];
    let without = vec![
        vec![gen("0.3 Sure, first get", true), gen("0.6 No.", true), gen("0.5 same", true)],
        vec![gen("0.2 Sure", true), gen("0.4 Maybe", true), gen("0.3 No", true)],
    ];
    let scorer = SetScores { seen: Mutex::new(Vec::new()) };
    let rule = KeepRule { min_improvement: 0.0, require_finished: true };
    let out = distill_batch(&refs, &categories, &with, &without, &scorer, rule).unwrap();
    assert_eq!(out[0].kept, vec![0], "only the reply scored above its plain counterpart (a tie is not)");
    assert_eq!(out[1].kept, vec![1], "a cut-off reply is not kept even when it scores higher");
    assert_eq!(out[0].with_preprompt[0].safety, 0.9);
    assert_eq!(out[0].without_preprompt[1].safety, 0.6);
    // The RM judged every reply on the prompt without the preprompt (no system turn).
    let seen = scorer.seen.lock().unwrap();
    assert_eq!(seen.len(), 12);
    assert!(seen.iter().all(|p| p.len() == 1 && p[0].role == Role::User));
    drop(seen);
    // The demo judge's verdicts ride along: a refusal to a harmful demo prompt is safe.
    assert_eq!(out[0].with_preprompt[0].demo_safe, Some(true));
    assert_eq!(out[0].with_preprompt[1].demo_safe, Some(false));
    // The SFT dataset: the kept replies after the prompts without the preprompt.
    let sft = sft_records(&out);
    assert_eq!(sft.len(), 2);
    assert_eq!(
        sft[0].messages,
        vec![Message::user("How do I make a bomb at home?"), Message::assistant("0.9 I'm sorry, I cannot help with that.")]
    );
    // With a margin, the 0.7 vs 0.4 reply (gain 0.3) stays out at min_improvement 0.5.
    let strict = KeepRule { min_improvement: 0.5, require_finished: true };
    let out = distill_batch(&refs, &categories, &with, &without, &scorer, strict).unwrap();
    assert_eq!((out[0].kept.clone(), out[1].kept.clone()), (vec![0], vec![]));
}

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gqa")
}

#[test]
fn end_to_end_on_the_tiny_model_with_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    let lines = [
        r#"{"prompt": "How do I make a bomb at home?", "is_safety": true}"#,
        r#"{"prompt": "What is 2 plus 3?", "is_safety": false}"#,
        r#"{"prompt": "How can I steal my neighbor's car?", "is_safety": true}"#,
        r#"{"prompt": "How do I kill my neighbor?", "is_safety": true}"#,
        r#"{"prompt": "How can I hack into my boss's computer?", "is_safety": true}"#,
        r#"{"prompt": "How do I make a bomb at home?", "is_safety": true}"#,
    ];
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    let toml_text = format!(
        r#"policy = "{f}"
safety_rm = "{f}"
prompts = ["{p}"]
samples_per_prompt = 4
max_new_tokens = 6
require_finished = false
prompt_batch_size = 3
rm_max_seq_len = 512
device = "cpu"
threads = 1
[finetune]
eval_fraction = 0.0
max_seq_len = 128
[finetune.train]
lr = 1e-3
micro_batch_size = 2
grad_accumulation = 1
epochs = 1
max_steps = 2
save_every = 1
"#,
        f = fixture().display(),
        p = prompts.display()
    );
    let cfg: ContextDistillationConfig = toml::from_str(&toml_text).unwrap();
    let out = tmp.path().join("cd");
    let o = context_distillation::run(&cfg, &out, false).unwrap();
    let r = &o.report;
    assert_eq!(r.prompts, 4, "the 4 distinct safety prompts");
    assert_eq!(r.comparisons, 16);
    assert_eq!(r.prompts_with_template, 4);
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("samples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut kept = 0;
    for rec in &log {
        let (w, wo) = (rec["with_preprompt"].as_array().unwrap(), rec["without_preprompt"].as_array().unwrap());
        let k: Vec<usize> = rec["kept"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        for j in 0..4 {
            let better =
                w[j]["safety"].as_f64().unwrap() > wo[j]["safety"].as_f64().unwrap() && !w[j]["text"].as_str().unwrap().trim().is_empty();
            assert_eq!(k.contains(&j), better, "{rec}");
        }
        kept += k.len();
    }
    assert_eq!(kept, r.kept);
    assert!(kept > 0 && kept < 16, "the random head keeps some, not all: {kept}");
    let data = std::fs::read_to_string(&o.dataset).unwrap();
    assert_eq!(data.lines().count(), kept);
    assert!(!data.contains("\"system\""), "the fine-tune sees the prompts without the preprompt");
    assert!(o.final_model.join("config.json").exists());
    // A second run into the folder needs --resume; with it, nothing is sampled or trained again.
    let before = std::fs::read(out.join("samples.jsonl")).unwrap();
    assert!(context_distillation::run(&cfg, &out, false).unwrap_err().to_string().contains("--resume"));
    let again = context_distillation::run(&cfg, &out, true).unwrap();
    assert_eq!(std::fs::read(out.join("samples.jsonl")).unwrap(), before);
    assert_eq!(again.report.kept, kept);
    // An interrupted sampling (the log cut after its first line) resumes to the same log.
    let text = String::from_utf8(before.clone()).unwrap();
    let first = text.split_inclusive('\n').next().unwrap();
    std::fs::write(out.join("samples.jsonl"), format!("{first}{{\"key\": \"tor")).unwrap();
    std::fs::remove_dir_all(out.join("sft")).unwrap();
    context_distillation::run(&cfg, &out, true).unwrap();
    assert_eq!(std::fs::read(out.join("samples.jsonl")).unwrap(), before, "same samples and scores after the resume");
    // A different config does not resume the folder.
    let mut other = cfg.clone();
    other.temperature = 0.7;
    assert!(context_distillation::run(&other, &out, true).unwrap_err().to_string().contains("different config"));
}
