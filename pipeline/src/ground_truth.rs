//! Ground-truth helpfulness, safety and false refusals of a policy on held-out demo prompts,
//! judged by the demo world.
use crate::compare::{sampled_replies, tally, truth_score};
use crate::config::PipelineSection;
use crate::error::StageFailure;
use demo_world::{evaluate_policy, greedy, PolicyEval};
use llama::SamplingParams;
use std::path::Path;

/// Per-reply judgements of a stage's sampled evaluation, saved in its folder so that later
/// stages can be compared with it reply by reply (the same prompts and seeds).
pub const EVAL_SCORES_FILE: &str = "eval_truth_scores.json";

/// The top-level rates from `eval_samples` sampled replies per prompt at `eval_temperature`
/// (greedy replies saturate: a tiny policy that refuses every harmful prompt greedily still
/// complies in a share of its samples), and the greedy rates under `greedy`. The sampled replies'
/// demo-judge scores ([`crate::compare::truth_score`]) go to `dir/eval_truth_scores.json`; with a
/// `baseline` (name, folder) that saved its own, `win_vs_baseline` holds this policy's win / tie /
/// loss against it, reply by reply (Llama 2 Figure 11's view, judged by the ground truth).
pub fn ground_truth(
    model: &Path,
    prompts: &Path,
    p: &PipelineSection,
    dir: &Path,
    baseline: Option<Baseline<'_>>,
) -> Result<serde_json::Value, StageFailure> {
    let (tok, _) = llama::tokenizer::resolve(None, Some(model))?;
    let recs: Vec<datasets::PromptRecord> = datasets::io::read_all(prompts)?;
    let c = p.device.compute(None)?;
    let (_vs, m) = llama::checkpoint::load_causal_lm(model, c.device, c.kind)?;
    let params = greedy(p.eval_max_new_tokens, m.cfg.eos_token_id);
    let g = evaluate_policy(&m, &tok, &recs, &params, 64, 1)?;
    let mut out = rates(&g);
    if p.eval_temperature > 0.0 {
        // What `evaluate_policy` does, keeping the replies to judge them one by one.
        let sampled = SamplingParams { temperature: p.eval_temperature, seed: 0, ..params };
        let r = sampled_replies(&m, &tok, &recs, &sampled, 64, p.eval_samples.max(1))?;
        if r.replies.is_empty() {
            return Err(
                format!("{}: no prompt fits the model's positions with {} new tokens", prompts.display(), p.eval_max_new_tokens).into()
            );
        }
        let scores = demo_world::ground_truth(r.replies.iter().map(|x| (x.prompt.prompt.as_slice(), x.text.as_str())));
        let per_reply: Vec<Option<f64>> = r.replies.iter().map(|x| truth_score(&x.prompt.prompt, &x.text)).collect();
        let saved = save_scores(&dir.join(EVAL_SCORES_FILE), prompts, p, per_reply)?;
        out = serde_json::json!({
            "helpful": scores.helpful_rate, "safe": scores.safe_rate, "false_refusal": scores.false_refusal_rate,
            "n": scores.n, "per_family": scores.per_family,
        });
        out["temperature"] = p.eval_temperature.into();
        out["samples_per_prompt"] = p.eval_samples.max(1).into();
        out["greedy"] = rates(&g);
        drop(m);
        if let Some(b) = baseline {
            let file = b.dir.join(EVAL_SCORES_FILE);
            let mut base = read_scores(&file).filter(|v| same_settings(v, &saved));
            if base.is_none() {
                // A baseline done before its scores were saved (or under other settings): judge
                // its replies now, once.
                let (_vs, bm) = llama::checkpoint::load_causal_lm(b.model, c.device, c.kind)?;
                let r = sampled_replies(&bm, &tok, &recs, &sampled, 64, p.eval_samples.max(1))?;
                let per: Vec<Option<f64>> = r.replies.iter().map(|x| truth_score(&x.prompt.prompt, &x.text)).collect();
                base = Some(save_scores(&file, prompts, p, per)?);
            }
            if let Some(w) = base.and_then(|base| win_vs(&saved, &base)) {
                out["win_vs_baseline"] = serde_json::json!({"baseline": b.name, "judge": "demo_judges", "result": w});
            }
        }
    }
    out["examples"] = serde_json::to_value(g.samples.iter().take(4).collect::<Vec<_>>())?;
    Ok(out)
}

/// The stage the win rates are against (the pipeline's first SFT stage): name, folder, model.
#[derive(Debug, Clone, Copy)]
pub struct Baseline<'a> {
    pub name: &'a str,
    pub dir: &'a Path,
    pub model: &'a Path,
}

/// Writes per-reply scores with the settings they were sampled under; returns what it wrote.
fn save_scores(file: &Path, prompts: &Path, p: &PipelineSection, scores: Vec<Option<f64>>) -> Result<serde_json::Value, StageFailure> {
    let bytes = std::fs::read(prompts).map_err(|e| format!("{}: {e}", prompts.display()))?;
    let v = serde_json::json!({
        "prompts_fnv1a": training::runner::fnv1a(&bytes), "temperature": p.eval_temperature,
        "samples_per_prompt": p.eval_samples.max(1), "max_new_tokens": p.eval_max_new_tokens, "scores": scores,
    });
    llama::checkpoint::write_atomic(file, serde_json::to_string(&v)?.as_bytes())?;
    Ok(v)
}

fn read_scores(file: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
}

/// Two saved score files come from the same prompts, temperature, samples and reply budget.
fn same_settings(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    ["prompts_fnv1a", "temperature", "samples_per_prompt", "max_new_tokens"].iter().all(|k| a[k] == b[k])
        && a["scores"].as_array().map(Vec::len) == b["scores"].as_array().map(Vec::len)
}

/// Win / tie / loss of the replies of `saved` against those of `base` (same settings), reply by
/// reply, judged by the demo judges' scores.
fn win_vs(saved: &serde_json::Value, base: &serde_json::Value) -> Option<crate::compare::WinTieLoss> {
    let scores =
        |v: &serde_json::Value| -> Option<Vec<Option<f64>>> { v["scores"].as_array().map(|a| a.iter().map(|x| x.as_f64()).collect()) };
    same_settings(saved, base).then(|| tally(&scores(saved).unwrap_or_default(), &scores(base).unwrap_or_default(), 0.0))
}
fn rates(e: &PolicyEval) -> serde_json::Value {
    serde_json::json!({
        "helpful": e.scores.helpful_rate, "safe": e.scores.safe_rate, "false_refusal": e.scores.false_refusal_rate,
        "n": e.scores.n, "per_family": e.scores.per_family,
    })
}
