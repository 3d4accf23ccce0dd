//! Ground-truth helpfulness, safety and false refusals of a policy on held-out demo prompts,
//! judged by the demo world.
use crate::config::PipelineSection;
use crate::error::StageFailure;
use demo_world::{evaluate_policy, greedy, PolicyEval};
use llama::SamplingParams;
use std::path::Path;

/// The top-level rates from `eval_samples` sampled replies per prompt at `eval_temperature`
/// (greedy replies saturate: a tiny policy that refuses every harmful prompt greedily still
/// complies in a share of its samples), and the greedy rates under `greedy`.
pub fn ground_truth(model: &Path, prompts: &Path, p: &PipelineSection) -> Result<serde_json::Value, StageFailure> {
    let (tok, _) = llama::tokenizer::resolve(None, Some(model))?;
    let recs: Vec<datasets::PromptRecord> = datasets::io::read_all(prompts)?;
    let c = p.device.compute(None)?;
    let (_vs, m) = llama::checkpoint::load_causal_lm(model, c.device, c.kind)?;
    let params = greedy(p.eval_max_new_tokens, m.cfg.eos_token_id);
    let g = evaluate_policy(&m, &tok, &recs, &params, 64, 1)?;
    let mut out = rates(&g);
    if p.eval_temperature > 0.0 {
        let sampled = SamplingParams { temperature: p.eval_temperature, seed: 0, ..params };
        let sv = evaluate_policy(&m, &tok, &recs, &sampled, 64, p.eval_samples.max(1))?;
        out = rates(&sv);
        out["temperature"] = p.eval_temperature.into();
        out["samples_per_prompt"] = p.eval_samples.max(1).into();
        out["greedy"] = rates(&g);
    }
    out["examples"] = serde_json::to_value(g.samples.iter().take(4).collect::<Vec<_>>())?;
    Ok(out)
}

fn rates(e: &PolicyEval) -> serde_json::Value {
    serde_json::json!({
        "helpful": e.scores.helpful_rate, "safe": e.scores.safe_rate, "false_refusal": e.scores.false_refusal_rate,
        "n": e.scores.n, "per_family": e.scores.per_family,
    })
}
