//! The pipeline report: `report.json` (every stage's manifest summary, paths relative to the run
//! folder), `report.md` (ground truth, Table 8 layout of the reward models, reward-model scores of
//! each policy stage's held-out replies, PPO reward and KL) and `ground_truth.png`; and the
//! pipeline's own TensorBoard events ([`write_stage_events`]).
use crate::error::Result;
use crate::manifest::Manifest;
use std::collections::BTreeMap;
use std::path::Path;
use training::tensorboard::{scalars_of, tag, EventWriter, Value};

/// TensorBoard for the pipeline (the stages' own runs are their folders' event files). Into the
/// run folder's event file `w`, at step `position` (the stage's place in the pipeline, from 1):
/// text `pipeline/stage` (name, kind, output) and, for a policy stage, its ground truth
/// (`ground_truth/{helpful,safe,false_refusal}`, `ground_truth/greedy/...`, per family) and a few
/// of its replies (text `ground_truth/examples`). A reward stage's held-out accuracy per rating bin
/// (Llama 2 Table 8), per test set and overall goes into `<stage>/eval/` as a run of its own
/// (`reward_eval/accuracy/<bin>`, at its last training step), rewritten each time.
pub fn write_stage_events(w: &mut EventWriter, out: &Path, position: u64, m: &Manifest) -> Result<()> {
    let mut values =
        vec![Value::text("pipeline/stage", format!("`{}` ({}): `{}`, {:.0} s", m.name, m.kind, m.output.display(), m.wall_seconds))];
    values.push(Value::scalar("pipeline/wall_seconds", m.wall_seconds));
    if let Some(gt) = &m.ground_truth {
        values.extend(scalars_of("ground_truth", gt));
        let examples: Vec<String> = gt["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some(format!("**prompt**: {}\n\n**reply**: {}", e[0].as_str()?, e[1].as_str()?)))
            .collect();
        if !examples.is_empty() {
            values.push(Value::text("ground_truth/examples", format!("`{}`\n\n{}", m.name, examples.join("\n\n---\n\n"))));
        }
    }
    w.write(position, values)?;
    w.sync()?;
    let ev = &m.metrics["eval"];
    if m.kind == "reward" && ev.is_object() {
        let mut rm = Vec::new();
        let acc = |a: &serde_json::Value| a["accuracy"].as_f64().filter(|_| a["n"].as_u64().is_some_and(|n| n > 0));
        for bin in ev["by_rating"].as_array().into_iter().flatten() {
            if let (Some(name), Some(a)) = (bin[0].as_str(), acc(&bin[1])) {
                rm.push(Value::scalar(format!("reward_eval/accuracy/{}", tag(name)), a));
            }
        }
        rm.extend(acc(&ev["overall"]).map(|a| Value::scalar("reward_eval/accuracy/overall", a)));
        for (src, a) in ev["by_source"].as_object().into_iter().flatten() {
            rm.extend(acc(a).map(|a| Value::scalar(format!("reward_eval/accuracy_by_source/{}", tag(src)), a)));
        }
        rm.extend(ev["mean_margin"].as_f64().map(|v| Value::scalar("reward_eval/mean_margin", v)));
        for k in ["recall", "precision"] {
            rm.extend(ev["safety"][k].as_f64().map(|v| Value::scalar(format!("reward_eval/safety_{k}"), v)));
        }
        let mut e = EventWriter::open(&out.join(&m.name).join("eval"), None)?;
        e.write(m.metrics["run"]["steps"].as_u64().unwrap_or(0), rm)?;
        e.sync()?;
    }
    Ok(())
}

/// A stage's throughput for the report, from its manifest and run folder: training tokens/s (SFT,
/// RM), generated tokens/s of sampling (rejection sampling), rollout and training tokens/s (PPO,
/// medians over iterations).
fn throughput(out: &Path, m: &Manifest, rs_report: Option<&serde_json::Value>) -> Option<String> {
    let x = &m.metrics;
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    match m.kind.as_str() {
        "sft" => x["tokens_per_s"].as_f64().map(|t| format!("{t:.0} train")),
        "reward" => x["run"]["tokens_per_s"].as_f64().map(|t| format!("{t:.0} train")),
        "rejection_sampling" => {
            let t = rs_report?["iterations"].as_array()?.last()?["throughput"]["tokens_per_s"].as_f64()?;
            Some(format!("{t:.0} generated"))
        }
        "ppo" => {
            let recs = training::metrics::read_metrics(&out.join(&m.name).join("metrics.jsonl")).ok()?;
            let col = |k: &str| median(recs.iter().filter_map(|r| r.get(k)?.as_f64()).collect());
            Some(format!("{:.0} rollout, {:.0} train", col("rollout_tokens_per_s")?, col("train_tokens_per_s")?))
        }
        _ => None,
    }
}

/// A rejection-sampling stage's own `report.json` (per iteration: evaluations, throughput).
fn rs_report(out: &Path, m: &Manifest) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(out.join(&m.name).join("report.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// A policy stage's win rate against the baseline (SFT), `0.543 [0.512, 0.574]`.
fn win_rate(m: &Manifest) -> Option<String> {
    let w = &m.ground_truth.as_ref()?["win_vs_baseline"]["result"];
    let f = |v: &serde_json::Value| v.as_f64().map(|x| format!("{x:.3}"));
    Some(format!("{} [{}, {}]", f(&w["win_rate"])?, f(&w["win_rate_ci"]["lo"])?, f(&w["win_rate_ci"]["hi"])?))
}

/// Accuracy of a reward stage's evaluation on one source of its test data: (correct, n).
fn source_accuracy(m: &Manifest, source: &str) -> Option<(u64, u64)> {
    let a = &m.metrics["eval"]["by_source"][source];
    let n = a["n"].as_u64()?;
    // Older manifests may lack `correct`: from the accuracy.
    let correct = a["correct"].as_u64().or_else(|| Some((a["accuracy"].as_f64()? * n as f64).round() as u64))?;
    Some((correct, n))
}

/// A reward model's accuracy on a round's fresh test comparisons, with its Wilson 95% interval.
fn rm_accuracy(stage: Option<&str>, model: &str, correct: u64, n: u64) -> serde_json::Value {
    let ci = crate::compare::wilson(correct as usize, n as usize, crate::compare::Z95);
    let accuracy = if n == 0 { serde_json::Value::Null } else { (correct as f64 / n as f64).into() };
    serde_json::json!({"stage": stage, "model": model, "n": n, "correct": correct, "accuracy": accuracy, "ci95": ci})
}

/// Every round of every rounds block (Llama 2's RLHF-V1 ... V5), for report.json's `rounds`:
/// the round's new comparisons (its `annotate` stage: pairs sampled, rated, held out, and of the
/// held-out prompts' pairs how many the annotators could not rate), the reward models before the
/// round (the annotate stage's `eval_before`) and after it (those its policy used, from their own
/// evaluation) on the round's fresh test comparisons, and each policy's win rate against SFT.
pub fn rounds_summary(manifests: &[Manifest]) -> Vec<serde_json::Value> {
    let mut rounds: Vec<(String, usize)> = manifests.iter().filter_map(|m| m.round.as_ref().map(|r| (r.block.clone(), r.round))).collect();
    rounds.dedup();
    let reward_at = |path: &str| manifests.iter().find(|m| m.kind == "reward" && m.output.display().to_string() == path);
    let mut out = Vec::new();
    for (block, r) in rounds {
        let in_round: Vec<&Manifest> =
            manifests.iter().filter(|m| m.round.as_ref().is_some_and(|x| x.block == block && x.round == r)).collect();
        let ann = in_round.iter().find(|m| m.kind == "annotate");
        let source = ann.and_then(|a| a.metrics["source"].as_str().map(String::from));
        let policies: Vec<&&Manifest> = in_round.iter().filter(|m| m.ground_truth.is_some()).collect();
        let mut rms = serde_json::Map::new();
        for role in crate::pairs::REWARD_ROLES {
            let mut e = serde_json::Map::new();
            let mut before_stage = None;
            if let Some(b) = ann.map(|a| &a.metrics["eval_before"][role]).filter(|b| b.is_object()) {
                let model = b["model"].as_str().unwrap_or_default();
                let (correct, n) = (b["correct"].as_u64().unwrap_or(0), b["n"].as_u64().unwrap_or(0));
                before_stage = reward_at(model);
                let stage = before_stage.map(|m| m.name.as_str());
                e.insert("before".into(), rm_accuracy(stage, model, correct, n));
                // On the comparisons of its own kind (`by_kind`: kind -> [n, correct]).
                if let (Some(n), Some(correct)) = (b["by_kind"][role][0].as_u64(), b["by_kind"][role][1].as_u64()) {
                    e.insert("before_on_kind".into(), rm_accuracy(stage, model, correct, n));
                }
            }
            // After: this round's instance of the template stage that trained the model before
            // (`rm_helpfulness` or `rm_helpfulness_v1` -> `rm_helpfulness_v2`), else the reward
            // model the round's (last) policy used.
            let retrained = before_stage.and_then(|b| {
                let base = template_name(&b.name);
                in_round.iter().find(|m| m.kind == "reward" && m.name == format!("{base}_v{r}")).copied()
            });
            let used = retrained.or_else(|| policies.iter().rev().find_map(|p| reward_at(p.config[format!("{role}_rm")].as_str()?)));
            if let (Some(rm), Some(src)) = (used, &source) {
                let model = rm.output.display().to_string();
                e.insert(
                    "after".into(),
                    match source_accuracy(rm, src) {
                        Some((correct, n)) => rm_accuracy(Some(&rm.name), &model, correct, n),
                        None => serde_json::json!({"stage": rm.name, "model": model, "n": 0, "note": format!("not evaluated on {src}")}),
                    },
                );
                let k = &rm.metrics["eval"]["by_source_kind"][src][role];
                if let (Some(n), Some(correct)) = (k["n"].as_u64(), k["correct"].as_u64()) {
                    e.insert("after_on_kind".into(), rm_accuracy(Some(&rm.name), &model, correct, n));
                }
            }
            if !e.is_empty() {
                rms.insert(role.into(), e.into());
            }
        }
        let fresh = ann.map(|a| {
            let x = &a.metrics;
            serde_json::json!({
                "stage": a.name, "source": source, "pairs_sampled": x["pairs"], "rated": x["records"], "train": x["train"], "test": x["test"],
                "test_pairs_sampled": x["test_pairs_sampled"], "test_pairs_unrated": x["test_pairs_unrated"],
            })
        });
        let policies: Vec<serde_json::Value> = policies
            .iter()
            .map(|p| {
                let rm = |k: &str| p.config[k].as_str().and_then(&reward_at).map(|m| m.name.clone());
                serde_json::json!({
                    "stage": p.name, "helpfulness_rm": rm("helpfulness_rm"), "safety_rm": rm("safety_rm"),
                    "win_vs_sft": p.ground_truth.as_ref().map(|g| g["win_vs_baseline"]["result"].clone()),
                })
            })
            .collect();
        out.push(serde_json::json!({"block": block, "round": r, "fresh": fresh, "reward_models": rms, "policies": policies}));
    }
    out
}

/// The template stage a stage name comes from: `rm_v2` -> `rm` (a plain name stays).
fn template_name(name: &str) -> &str {
    match name.rsplit_once("_v") {
        Some((base, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// `62.5 [45.1, 77.3]` (percent, Wilson 95%), or `–`.
fn pct_ci(a: &serde_json::Value) -> String {
    match (a["accuracy"].as_f64(), a["ci95"]["lo"].as_f64(), a["ci95"]["hi"].as_f64()) {
        (Some(x), Some(lo), Some(hi)) => format!("{:.1} [{:.1}, {:.1}]", 100.0 * x, 100.0 * lo, 100.0 * hi),
        _ => "–".into(),
    }
}

/// The RLHF-rounds tables of report.md from [`rounds_summary`].
fn rounds_section(manifests: &[Manifest], rounds: &[serde_json::Value]) -> String {
    if rounds.is_empty() {
        return String::new();
    }
    let by_name = |n: &serde_json::Value| n.as_str().and_then(|n| manifests.iter().find(|m| m.name == n));
    let mut md = String::from(
        "
## RLHF rounds

Each round: new comparisons on the latest policy's samples (annotated), reward models retrained, then the policy. Fresh comparisons: the held-out share of the round's batch (`prefs_test.jsonl`, by prompt).

| round | new comparisons rated (train/test) | reward models used: accuracy % on the original test set / on this round's fresh comparisons | policy | win rate vs SFT [95% CI] |
|---|---|---|---|---|
",
    );
    let mut fresh_rows = String::new();
    for round in rounds {
        let label = format!("{} #{}", round["block"].as_str().unwrap_or_default(), round["round"]);
        let f = &round["fresh"];
        let source = f["source"].as_str();
        let batch = if f.is_object() {
            format!("{} / {} ({})", f["train"], f["test"], source.unwrap_or("?"))
        } else {
            "– (the reward models from before)".into()
        };
        for p in round["policies"].as_array().into_iter().flatten() {
            let rms: Vec<String> = ["helpfulness_rm", "safety_rm"]
                .iter()
                .filter_map(|k| by_name(&p[*k]))
                .map(|rm| {
                    let overall =
                        rm.metrics["eval"]["overall"]["accuracy"].as_f64().map(|a| format!("{:.1}", 100.0 * a)).unwrap_or_default();
                    let fresh = source
                        .and_then(|s| source_accuracy(rm, s))
                        .map(|(c, n)| format!("{:.1} (n={n})", 100.0 * c as f64 / n.max(1) as f64))
                        .unwrap_or_else(|| "–".into());
                    format!("`{}` {overall} / {fresh}", rm.name)
                })
                .collect();
            let w = by_name(&p["stage"]).and_then(win_rate).unwrap_or_else(|| "–".into());
            md += &format!("| {label} | {batch} | {} | `{}` | {w} |\n", rms.join("; "), p["stage"].as_str().unwrap_or_default());
        }
        if f.is_object() {
            // Each reward model on the comparisons of its own kind (all of them when the
            // comparisons carry no kind), as Llama 2 reads them.
            let rm = |role: &str, when: &str| {
                let e = &round["reward_models"][role];
                let a = if e[format!("{when}_on_kind")].is_object() { &e[format!("{when}_on_kind")] } else { &e[when] };
                match a["stage"].as_str() {
                    Some(stage) => format!("{} `{stage}` (n={})", pct_ci(a), a["n"]),
                    None => "–".into(),
                }
            };
            fresh_rows += &format!(
                "| {label} | {} | {} | {} | {} | {} | {} | {} |\n",
                f["test"],
                f["test_pairs_sampled"],
                f["test_pairs_unrated"],
                rm("helpfulness", "before"),
                rm("helpfulness", "after"),
                rm("safety", "before"),
                rm("safety", "after")
            );
        }
    }
    if !fresh_rows.is_empty() {
        md += "
### Reward models on each round's fresh comparisons, before and after the round retrains them

Before: the reward models the previous round used (they never saw this batch); after: the ones this round's policy used. Accuracy % (chosen scored above rejected; a tie is wrong) with the Wilson 95% interval, on the round's held-out rated pairs of the model's own kind (the helpfulness RM on the helpfulness comparisons, the safety RM on the safety ones, as in Llama 2's Table 7; all of them when the comparisons carry no kind), the same pairs before and after; report.json also has each model on all of them. Unrated: held-out pairs the annotators could not tell apart (the demo judges: equal scores) or did not rate.

| round | fresh test pairs rated | sampled | unrated | helpfulness RM before | helpfulness RM after | safety RM before | safety RM after |
|---|---|---|---|---|---|---|---|
";
        md += &fresh_rows;
    }
    md
}

/// Ghost Attention stages (Llama 2 Section 3.3): adherence to the first turn's instruction by turn
/// index, before and after (the view of Figures 9 and 28).
fn gatt_section(manifests: &[Manifest]) -> String {
    let mut md = String::new();
    for m in manifests.iter().filter(|m| m.kind == "gatt") {
        let eval = |k: &str| serde_json::from_value::<gatt::GattEval>(m.metrics[k].clone()).ok();
        if let Some(after) = eval("after") {
            md += &format!("\n## Ghost Attention `{}`: replies that obey the first turn's instruction, by turn\n\n", m.name);
            md += &gatt::eval::markdown(eval("before").as_ref(), &after);
        }
    }
    md
}

/// Writes `report.json`, `report.md` and `ground_truth.png` into the run folder `out`.
pub fn write_report(out: &Path, manifests: &[Manifest]) -> Result<()> {
    let rs_reports: BTreeMap<&str, serde_json::Value> =
        manifests.iter().filter(|m| m.kind == "rejection_sampling").filter_map(|m| Some((m.name.as_str(), rs_report(out, m)?))).collect();
    let rs_of = |m: &Manifest| rs_reports.get(m.name.as_str());
    let stages: Vec<serde_json::Value> = manifests
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name, "kind": m.kind, "output": m.output, "wall_seconds": m.wall_seconds, "tokens_per_s": throughput(out, m, rs_of(m)),
                "ground_truth": m.ground_truth, "metrics": m.metrics, "fingerprint": m.fingerprint, "round": m.round,
            })
        })
        .collect();
    let rounds = rounds_summary(manifests);
    let report = serde_json::json!({"stages": stages, "rounds": rounds});
    llama::checkpoint::write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    let mut md = String::from(
        "# Pipeline report\n\n## Ground truth on held-out demo prompts\n\nSampled: the pooled rates of several sampled replies per prompt (temperature and count in \
         report.json); greedy: one greedy reply per prompt. Win rate vs SFT: the sampled replies against SFT's with the same seeds, judged by the demo \
         judges, (wins + ties / 2) / n with its 95% interval (Llama 2 Figure 11's view).\n\n| stage | kind | helpful | safe | false refusal | greedy helpful | greedy safe | greedy false refusal | win rate vs SFT [95% CI] | wall s | tokens/s |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let (mut groups, mut h, mut s, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for m in manifests {
        let gt = |k: &str| m.ground_truth.as_ref().and_then(|g| g[k].as_f64());
        let fmt = |x: Option<f64>| x.map(|v| format!("{:.3}", v)).unwrap_or_else(|| "–".into());
        let gg = |k: &str| m.ground_truth.as_ref().and_then(|g| g["greedy"][k].as_f64());
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |\n",
            m.name,
            m.kind,
            fmt(gt("helpful")),
            fmt(gt("safe")),
            fmt(gt("false_refusal")),
            fmt(gg("helpful")),
            fmt(gg("safe")),
            fmt(gg("false_refusal")),
            win_rate(m).unwrap_or_else(|| "–".into()),
            m.wall_seconds,
            throughput(out, m, rs_of(m)).unwrap_or_else(|| "–".into())
        );
        if m.ground_truth.is_some() {
            groups.push(m.name.clone());
            h.push(gt("helpful").unwrap_or(f64::NAN));
            s.push(gt("safe").unwrap_or(f64::NAN));
            f.push(gt("false_refusal").unwrap_or(f64::NAN));
        }
    }
    let rm: Vec<&Manifest> = manifests.iter().filter(|m| m.kind == "reward").collect();
    if !rm.is_empty() {
        md += "\n## Reward models: test accuracy by rating (Llama 2 Table 8 layout)\n\n| RM | significantly better | better | slightly better | negligibly better / unsure | avg |\n|---|---|---|---|---|---|\n";
        for m in rm {
            let ev = &m.metrics["eval"];
            let bins: Vec<String> = ev["by_rating"]
                .as_array()
                .map(|a| a.iter().map(|b| format!("{:.1}", 100.0 * b[1]["accuracy"].as_f64().unwrap_or(f64::NAN))).collect())
                .unwrap_or_default();
            md +=
                &format!("| {} | {} | {:.1} |\n", m.name, bins.join(" | "), 100.0 * ev["overall"]["accuracy"].as_f64().unwrap_or(f64::NAN));
        }
    }
    // What every run has, judges or not: the reward models' scores of each policy's held-out
    // replies (rejection sampling: greedy replies before and after; PPO: sampled replies).
    let mut rm_rows = String::new();
    for m in manifests {
        let f = |v: &serde_json::Value| v.as_f64().map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
        match m.kind.as_str() {
            "rejection_sampling" => {
                let Some(its) = rs_of(m).and_then(|r| r["iterations"].as_array()) else { continue };
                let (Some(first), Some(last)) = (its.first(), its.last()) else { continue };
                let (b, a) = (&first["eval_before"]["greedy"], &last["eval_after"]["greedy"]);
                rm_rows += &format!(
                    "| {} | greedy, {} prompts | R_c {} → {} | helpfulness {} → {} | safety {} → {} |\n",
                    m.name,
                    last["eval_after"]["prompts"],
                    f(&b["mean_reward"]),
                    f(&a["mean_reward"]),
                    f(&b["mean_helpfulness"]),
                    f(&a["mean_helpfulness"]),
                    f(&b["mean_safety"]),
                    f(&a["mean_safety"])
                );
            }
            "ppo" => {
                let x = &m.metrics;
                rm_rows += &format!(
                    "| {} | sampled, {} replies | LOGIT(R_c) {} → {} | | |\n",
                    m.name,
                    x["final_eval"]["responses"],
                    f(&x["initial_eval"]["reward"]),
                    f(&x["final_eval"]["reward"])
                );
            }
            _ => {}
        }
    }
    if !rm_rows.is_empty() {
        md += "\n## Reward-model scores of the held-out replies, start → end of each policy stage\n\n| stage | replies | combined | helpfulness RM (sigmoid) | safety RM (sigmoid) |\n|---|---|---|---|---|\n";
        md += &rm_rows;
    }
    md += &rounds_section(manifests, &rounds);
    md += &gatt_section(manifests);
    let ppo: Vec<&Manifest> = manifests.iter().filter(|m| m.kind == "ppo").collect();
    if !ppo.is_empty() {
        md += "\n## PPO: held-out reward and KL (the stage's own evaluation)\n\n| stage | iterations | eval reward LOGIT(Rc) start → end | KL to π_0 (nats/reply) at the end | curves |\n|---|---|---|---|---|\n";
        for m in ppo {
            let x = &m.metrics;
            let f = |v: &serde_json::Value| v.as_f64().map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
            md += &format!(
                "| {} | {} | {} → {} | {} | `{}/curves.png` |\n",
                m.name,
                x["iterations"],
                f(&x["initial_eval"]["reward"]),
                f(&x["final_eval"]["reward"]),
                f(&x["final_eval"]["kl"]),
                m.name
            );
        }
    }
    if !groups.is_empty() {
        let png = out.join("ground_truth.png");
        training::plot::bar_chart(
            &png,
            "Ground truth on held-out prompts (sampled replies; greedy in report.md)",
            "rate",
            &groups,
            &[("helpful".into(), h), ("safe".into(), s), ("false refusal".into(), f)],
        )?;
        md += "\n![ground truth per stage](ground_truth.png)\n";
    }
    md += "\nPer-stage curves: `<stage>/curves.png`; manifests: `<stage>/manifest.json`.\n";
    llama::checkpoint::write_atomic(&out.join("report.md"), md.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;
    use training::tensorboard::{event_files, read_events, Event, ValueData};

    fn manifest(name: &str, kind: &str, metrics: serde_json::Value, ground_truth: Option<serde_json::Value>) -> Manifest {
        Manifest {
            name: name.into(),
            kind: kind.into(),
            fingerprint: "f".into(),
            config: json!({}),
            inputs: Default::default(),
            output: PathBuf::from(format!("{name}/final")),
            metrics,
            ground_truth,
            wall_seconds: 2.0,
            round: None,
        }
    }

    fn get<'a>(events: &'a [Event], tag: &str) -> Vec<(i64, &'a ValueData)> {
        events.iter().flat_map(|e| e.values.iter().filter(|v| v.tag == tag).map(move |v| (e.step, &v.data))).collect()
    }

    #[test]
    fn the_rounds_table_shows_each_round_s_fresh_rm_accuracy_and_win_rate() {
        use crate::config::RoundOf;
        let round = |r: usize| Some(RoundOf { block: "rlhf".into(), round: r });
        let acc = |a: f64, n: u64| json!({"accuracy": a, "n": n});
        let rm_v1 = manifest("rm_h", "reward", json!({"eval": {"overall": acc(0.79, 100), "by_source": {"demo": acc(0.79, 100)}}}), None);
        let rm_v2 = manifest(
            "rm_h_v2",
            "reward",
            json!({"eval": {"overall": acc(0.8, 120), "by_source": {"demo": acc(0.79, 100), "round2": {"accuracy": 0.9, "n": 20, "correct": 18}},
                "by_source_kind": {"round2": {"helpfulness": {"n": 15, "correct": 14, "accuracy": 14.0 / 15.0}}}}}),
            None,
        );
        let win = |w: f64| json!({"helpful": 0.3, "win_vs_baseline": {"result": {"win_rate": w, "win_rate_ci": {"lo": w - 0.05, "hi": w + 0.05}}}});
        let mut p1 = manifest("rlhf_v1", "rejection_sampling", json!({}), Some(win(0.55)));
        p1.config = json!({"helpfulness_rm": "rm_h/final"});
        p1.round = round(1);
        let before = |model: &str, correct: u64| json!({"model": model, "n": 20, "correct": correct, "accuracy": correct as f64 / 20.0, "by_kind": {"helpfulness": [15, 9], "safety": [5, 2]}});
        let ann_metrics = json!({"pairs": 300, "records": 100, "train": 80, "test": 20, "test_pairs_sampled": 60, "test_pairs_unrated": 40,
            "source": "round2", "eval_before": {"helpfulness": before("rm_h/final", 11)}});
        let mut ann = manifest("prefs_v2", "annotate", ann_metrics, None);
        ann.round = round(2);
        let mut rm2 = rm_v2;
        rm2.round = round(2);
        let mut p2 = manifest("rlhf_v2", "rejection_sampling", json!({}), Some(win(0.6)));
        p2.config = json!({"helpfulness_rm": "rm_h_v2/final"});
        p2.round = round(2);
        let ms = [rm_v1, p1, ann, rm2, p2];
        let rounds = rounds_summary(&ms);
        let md = rounds_section(&ms, &rounds);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| rlhf #")).collect();
        assert_eq!(rows.len(), 3, "{md}"); // two rounds in the first table, round 2 again in the fresh-comparison table
        assert!(rows[0].contains("`rm_h` 79.0 / –") && rows[0].contains("`rlhf_v1`") && rows[0].contains("0.550 [0.500, 0.600]"), "{md}");
        assert!(rows[1].contains("80 / 20 (round2)") && rows[1].contains("`rm_h_v2` 80.0 / 90.0 (n=20)"), "{md}");
        assert!(rows[1].contains("0.600 [0.550, 0.650]"), "{md}");
        // Round 2's fresh comparisons, the helpfulness RM on the 15 helpfulness ones: before (9 of
        // 15) and after (14 of 15), Wilson intervals: 9/15: centre (0.6 + 0.128049) / 1.256097 =
        // 0.579612, half-width 1.560338 * sqrt(0.016 + 0.004268) = 0.222159 -> [35.7, 80.2];
        // 14/15 -> [70.2, 98.8]. The safety RM has no before/after here.
        let fresh: Vec<&str> = md.lines().filter(|l| l.starts_with("| rlhf #")).skip(2).collect();
        assert_eq!(fresh.len(), 1, "one round has fresh comparisons: {md}");
        assert!(
            fresh[0]
                .starts_with("| rlhf #2 | 20 | 60 | 40 | 60.0 [35.7, 80.2] `rm_h` (n=15) | 93.3 [70.2, 98.8] `rm_h_v2` (n=15) | – | – |"),
            "{md}"
        );
        // On all 20 fresh comparisons (report.json): 11/20 -> [34.2, 74.2]; 18/20 -> [69.9, 97.2].
        let h = &rounds[1]["reward_models"]["helpfulness"];
        assert_eq!((h["before"]["correct"].as_u64(), h["after"]["correct"].as_u64()), (Some(11), Some(18)));
        assert!((h["after"]["ci95"]["lo"].as_f64().unwrap() - 0.6990).abs() < 5e-4, "{h}");
        assert_eq!((h["before_on_kind"]["n"].as_u64(), h["after_on_kind"]["correct"].as_u64()), (Some(15), Some(14)));
        // Without kinds the table falls back to all of them.
        let mut plain = ms.clone();
        plain[2].metrics["eval_before"]["helpfulness"]["by_kind"] = json!(null);
        plain[3].metrics["eval"]["by_source_kind"] = json!(null);
        let md = rounds_section(&plain, &rounds_summary(&plain));
        assert!(
            md.contains("| rlhf #2 | 20 | 60 | 40 | 55.0 [34.2, 74.2] `rm_h` (n=20) | 90.0 [69.9, 97.2] `rm_h_v2` (n=20) | – | – |"),
            "{md}"
        );
        assert!(rounds[0]["fresh"].is_null() && rounds[0]["reward_models"].as_object().unwrap().is_empty(), "{}", rounds[0]);
        assert!(rounds_summary(&[manifest("sft", "sft", json!({}), None)]).is_empty());
    }

    #[test]
    fn stage_events_carry_the_ground_truth_per_stage_and_rm_accuracy_per_rating_bin() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path();
        let acc = |n: u64, c: u64| json!({"n": n, "correct": c, "accuracy": if n == 0 { 0.0 } else { c as f64 / n as f64 }});
        let eval = json!({
            "overall": acc(4, 3), "by_rating": [["significantly better", acc(2, 2)], ["negligibly better / unsure", acc(0, 0)]],
            "by_source": {"demo": acc(4, 3)}, "mean_margin": 0.5, "safety": null,
        });
        let rm = manifest("rm", "reward", json!({"run": {"steps": 7}, "eval": eval}), None);
        let gt = json!({"helpful": 0.5, "safe": 0.25, "false_refusal": 0.125, "n": 8, "greedy": {"helpful": 0.75}, "examples": [["hi", "hello"]]});
        let sft = manifest("sft", "sft", json!({}), Some(gt));
        let mut w = EventWriter::open(out, None).unwrap();
        write_stage_events(&mut w, out, 1, &rm).unwrap();
        write_stage_events(&mut w, out, 2, &sft).unwrap();
        drop(w);

        let files = event_files(out).unwrap();
        assert_eq!(files.len(), 1);
        let ev = read_events(&files[0]).unwrap();
        assert_eq!(get(&ev, "pipeline/stage").len(), 2);
        assert_eq!(get(&ev, "ground_truth/helpful"), [(2, &ValueData::Scalar(0.5))]);
        assert_eq!(get(&ev, "ground_truth/greedy/helpful"), [(2, &ValueData::Scalar(0.75))]);
        assert!(matches!(get(&ev, "ground_truth/examples")[..], [(2, ValueData::Text(t))] if t.contains("**reply**: hello")));

        let rm_files = event_files(&out.join("rm/eval")).unwrap();
        assert_eq!(rm_files.len(), 1);
        let ev = read_events(&rm_files[0]).unwrap();
        assert_eq!(get(&ev, "reward_eval/accuracy/significantly_better"), [(7, &ValueData::Scalar(1.0))]);
        assert_eq!(get(&ev, "reward_eval/accuracy/overall"), [(7, &ValueData::Scalar(0.75))]);
        assert_eq!(get(&ev, "reward_eval/accuracy_by_source/demo"), [(7, &ValueData::Scalar(0.75))]);
        assert!(get(&ev, "reward_eval/accuracy/negligibly_better___unsure").is_empty(), "an empty bin has no accuracy");
    }

    #[test]
    fn gatt_section_shows_adherence_by_turn_before_and_after() {
        let ev = |rates: &[f64]| {
            let by_turn: Vec<_> = rates
                .iter()
                .enumerate()
                .map(|(i, r)| json!({"turn": i + 1, "dialogs": 4, "obeyed": (r * 4.0) as usize, "rate": r}))
                .collect();
            json!({"by_turn": by_turn, "overall": 0.5, "after_first": 0.25, "turns_5_10": null, "samples": [], "skipped_turns": 0, "seconds": 1.0})
        };
        let m = manifest("gatt", "gatt", json!({"before": ev(&[1.0, 0.0]), "after": ev(&[1.0, 0.75])}), None);
        let md = gatt_section(&[m]);
        assert!(md.contains("Ghost Attention `gatt`") && md.contains("| 2 | 0.00 | 0.75 |"), "{md}");
        assert!(gatt_section(&[manifest("sft", "sft", json!({}), None)]).is_empty());
    }
}
