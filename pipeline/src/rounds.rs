//! Iterated RLHF rounds (Llama 2 Section 3.2.1 and 3.2.3, RLHF-V1 ... V5): a `kind = "rounds"`
//! entry of `[[stages]]` holds a template of stages that is repeated `rounds` times. Each round
//! collects a new batch of comparisons on samples of the latest policy, retrains the reward
//! models on every comparison so far and improves the policy (rejection sampling and/or PPO).
//!
//! ```toml
//! [[stages]]
//! name = "rlhf"
//! kind = "rounds"
//! rounds = 2
//! initial = { rlhf = "sft" }          # what `${rlhf@prev}` names in round 1
//!
//! [[stages.template]]
//! name = "pairs"
//! kind = "sample_pairs"
//! from_round = 2                      # round 1 uses the RMs V1 trained before the block
//! [stages.template.config]
//! policies = ["${rlhf@prev}"]
//! ...
//! ```
//!
//! The block is expanded into plain stages before anything else looks at the config, so
//! fingerprints, skip and resume work as for any stage: template stage `x` in round `r` is stage
//! `x_v{r}` (`pairs_v2`, `rlhf_v1`, `rlhf_v2`, ...), and later stages name it so. Inside a
//! template stage's strings:
//!
//! | | |
//! |---|---|
//! | `${round}` | the round number |
//! | `${x}` (x a template stage) | the newest `x` at or before this point: this round's when `x` came earlier in the template, else the last round's that had one, else `initial.x`, else the plain stage `x` |
//! | `${x@prev}` | the newest `x` of an earlier round, else `initial.x`, else the plain stage `x` |
//! | `${x@all}` | every `x` so far, in round order (only as an element of an array: one element each; none before `x`'s first round) |
//!
//! `.dir` goes after the modifier (`${rlhf@prev.dir}`). Any other `${stage}` is a plain reference.
//! A template stage runs in rounds `from_round ..= until_round` (default: all); two template
//! stages may share a name when their rounds do not overlap (a different config per round).
use crate::config::{RoundOf, StageSpec};
use std::collections::BTreeMap;

/// The kind of the `[[stages]]` entry that holds a rounds block.
pub const ROUNDS_KIND: &str = "rounds";

/// The stages of `specs` with every rounds block expanded in place; the error names the block
/// (or its template stage) and what is wrong.
pub fn expand(specs: &[StageSpec]) -> Result<Vec<StageSpec>, (String, String)> {
    let mut out = Vec::new();
    for spec in specs {
        if spec.kind != ROUNDS_KIND {
            if spec.rounds.is_some() || !spec.template.is_empty() || !spec.initial.is_empty() {
                return Err((spec.name.clone(), "`rounds`, `template` and `initial` belong to a `kind = \"rounds\"` block".into()));
            }
            out.push(spec.clone());
            continue;
        }
        out.extend(expand_block(spec)?);
    }
    Ok(out)
}

fn expand_block(block: &StageSpec) -> Result<Vec<StageSpec>, (String, String)> {
    let err = |msg: String| (block.name.clone(), msg);
    let n = block.rounds.ok_or_else(|| err("a rounds block needs `rounds = N` (N >= 1)".into()))?;
    if n == 0 {
        return Err(err("`rounds` must be at least 1".into()));
    }
    if block.template.is_empty() {
        return Err(err("a rounds block needs `[[stages.template]]` stages".into()));
    }
    if block.config.as_table().is_some_and(|t| !t.is_empty()) {
        return Err(err("a rounds block has no `config`: its stages' configs are in `[[stages.template]]`".into()));
    }
    let names: Vec<&str> = block.template.iter().map(|t| t.name.as_str()).collect();
    for (k, v) in &block.initial {
        if !names.contains(&k.as_str()) {
            return Err(err(format!("initial.{k} = {v:?}: {k:?} is not a template stage")));
        }
    }
    for t in &block.template {
        if t.from_round == 0 || t.until_round.is_some_and(|u| u < t.from_round) {
            return Err(err(format!("template stage {}: rounds {}..={:?} is empty", t.name, t.from_round, t.until_round)));
        }
        if t.kind == ROUNDS_KIND {
            return Err(err(format!("template stage {}: rounds blocks do not nest", t.name)));
        }
    }
    // Every expanded instance so far of each template stage, in order: (round, stage name).
    let mut instances: BTreeMap<&str, Vec<(usize, String)>> = BTreeMap::new();
    let mut out = Vec::new();
    for r in 1..=n {
        for t in block.template.iter().filter(|t| t.from_round <= r && t.until_round.is_none_or(|u| r <= u)) {
            let ctx = Ctx { round: r, names: &names, instances: &instances, initial: &block.initial };
            let mut config = t.config.clone();
            ctx.rewrite(&mut config).map_err(|m| err(format!("template stage {} (round {r}): {m}", t.name)))?;
            let name = format!("{}_v{r}", t.name);
            out.push(StageSpec {
                name: name.clone(),
                kind: t.kind.clone(),
                config,
                rounds: None,
                template: Vec::new(),
                initial: BTreeMap::new(),
                round: Some(RoundOf { block: block.name.clone(), round: r }),
            });
            instances.entry(t.name.as_str()).or_default().push((r, name));
        }
    }
    Ok(out)
}

struct Ctx<'a> {
    round: usize,
    names: &'a [&'a str],
    instances: &'a BTreeMap<&'a str, Vec<(usize, String)>>,
    initial: &'a BTreeMap<String, String>,
}

/// `${x@m.attr}` split: (x, m, ".attr" or "").
fn parse_key(key: &str) -> (&str, Option<&str>, &str) {
    let (base, attr) = match key.find('.') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    match base.split_once('@') {
        Some((x, m)) => (x, Some(m), attr),
        None => (base, None, attr),
    }
}

impl Ctx<'_> {
    fn fallback(&self, x: &str) -> String {
        self.initial.get(x).cloned().unwrap_or_else(|| x.to_string())
    }

    /// The stage name `${x@m}` stands for (one name; `@all` is handled by arrays).
    fn one(&self, x: &str, m: Option<&str>) -> Result<String, String> {
        let inst = self.instances.get(x).map(|v| v.as_slice()).unwrap_or_default();
        match m {
            None => Ok(inst.last().map(|(_, n)| n.clone()).unwrap_or_else(|| self.fallback(x))),
            Some("prev") => {
                Ok(inst.iter().rev().find(|(r, _)| *r < self.round).map(|(_, n)| n.clone()).unwrap_or_else(|| self.fallback(x)))
            }
            Some("all") => Err(format!("`${{{x}@all}}` stands for several files: use it as an element of an array")),
            Some(other) => Err(format!("`@{other}`: unknown modifier of `${{{x}}}` (expected @prev or @all)")),
        }
    }

    /// Rewrites one string (no `@all` in it).
    fn string(&self, s: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else { break };
            let key = &rest[start + 2..start + len];
            out += &rest[..start];
            let (x, m, attr) = parse_key(key);
            if key == "round" {
                out += &self.round.to_string();
            } else if self.names.contains(&x) {
                out += &format!("${{{}{attr}}}", self.one(x, m)?);
            } else if let Some(m) = m {
                return Err(format!("`${{{key}}}`: `@{m}` applies to the block's template stages ({})", self.names.join(", ")));
            } else {
                out += &rest[start..=start + len];
            }
            rest = &rest[start + len + 1..];
        }
        out += rest;
        Ok(out)
    }

    /// The `${x@all}` of `s`, if any: (x).
    fn all_of<'s>(&self, s: &'s str) -> Result<Option<&'s str>, String> {
        let mut found = None;
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else { break };
            let (x, m, _) = parse_key(&rest[start + 2..start + len]);
            if m == Some("all") {
                if !self.names.contains(&x) {
                    return Err(format!("`${{{x}@all}}`: {x:?} is not a template stage of the block ({})", self.names.join(", ")));
                }
                if found.is_some() {
                    return Err(format!("{s:?}: one `@all` per string"));
                }
                found = Some(x);
            }
            rest = &rest[start + len + 1..];
        }
        Ok(found)
    }

    fn rewrite(&self, v: &mut toml::Value) -> Result<(), String> {
        match v {
            toml::Value::String(s) => {
                if self.all_of(s)?.is_some() {
                    return Err(format!("{s:?}: `@all` stands for several files: use it as an element of an array"));
                }
                *s = self.string(s)?;
                Ok(())
            }
            toml::Value::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for x in a.drain(..) {
                    match &x {
                        toml::Value::String(s) if self.all_of(s)?.is_some() => {
                            let name = self.all_of(s)?.unwrap_or_default();
                            let token = format!("{name}@all");
                            for (_, inst) in self.instances.get(name).into_iter().flatten() {
                                out.push(toml::Value::String(self.string(&s.replace(&token, inst))?));
                            }
                        }
                        _ => {
                            let mut x = x;
                            self.rewrite(&mut x)?;
                            out.push(x);
                        }
                    }
                }
                *a = out;
                Ok(())
            }
            toml::Value::Table(t) => t.iter_mut().try_for_each(|(_, x)| self.rewrite(x)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;

    fn specs(text: &str) -> Vec<StageSpec> {
        let v = toml::Value::Table(text.parse().unwrap());
        PipelineConfig::from_toml(v, std::path::Path::new("t.toml")).unwrap().stages
    }

    const BLOCK: &str = r#"
[[stages]]
name = "sft"
kind = "sft"

[[stages]]
name = "rm"
kind = "reward"

[[stages]]
name = "rlhf"
kind = "rounds"
rounds = 3
initial = { policy = "sft" }

[[stages.template]]
name = "pairs"
kind = "sample_pairs"
from_round = 2
[stages.template.config]
policies = ["${policy@prev}"]
source = "round${round}"

[[stages.template]]
name = "rm"
kind = "reward"
from_round = 2
[stages.template.config]
train_data = ["${data}/train.jsonl", "${pairs@all}/x.jsonl"]
model = "${sft}"

[[stages.template]]
name = "policy"
kind = "rejection_sampling"
[stages.template.config]
policy = "${policy@prev}"
helpfulness_rm = "${rm}"
log = "${policy@prev.dir}/log"
"#;

    #[test]
    fn a_rounds_block_expands_into_plain_stages() {
        let out = expand(&specs(BLOCK)).unwrap();
        let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["sft", "rm", "policy_v1", "pairs_v2", "rm_v2", "policy_v2", "pairs_v3", "rm_v3", "policy_v3"]);
        let cfg = |name: &str| out.iter().find(|s| s.name == name).unwrap().config.clone();
        // Round 1: the previous policy is `initial`, the RM the plain stage of the same name.
        assert_eq!(cfg("policy_v1")["policy"].as_str(), Some("${sft}"));
        assert_eq!(cfg("policy_v1")["helpfulness_rm"].as_str(), Some("${rm}"));
        assert_eq!(cfg("policy_v1")["log"].as_str(), Some("${sft.dir}/log"));
        assert_eq!(cfg("pairs_v2")["policies"][0].as_str(), Some("${policy_v1}"));
        assert_eq!(cfg("pairs_v2")["source"].as_str(), Some("round2"));
        // `@all`: every batch so far, one array element each; plain references stay.
        let rm3 = cfg("rm_v3");
        let td: Vec<&str> = rm3["train_data"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(td, ["${data}/train.jsonl", "${pairs_v2}/x.jsonl", "${pairs_v3}/x.jsonl"]);
        assert_eq!(cfg("rm_v3")["model"].as_str(), Some("${sft}"));
        assert_eq!(cfg("policy_v3")["helpfulness_rm"].as_str(), Some("${rm_v3}"));
        assert_eq!(cfg("policy_v3")["policy"].as_str(), Some("${policy_v2}"));
        let r = out[5].round.as_ref().unwrap();
        assert_eq!((r.block.as_str(), r.round), ("rlhf", 2));
        assert!(out[0].round.is_none());
    }

    #[test]
    fn bad_blocks_are_errors_naming_the_block() {
        let e = expand(&specs(&BLOCK.replace("rounds = 3", "rounds = 0"))).unwrap_err();
        assert_eq!(e.0, "rlhf");
        assert!(e.1.contains("at least 1"), "{e:?}");
        let e = expand(&specs(&BLOCK.replace("policy = \"${policy@prev}\"", "policy = \"${policy@next}\""))).unwrap_err();
        assert!(e.1.contains("@next") && e.1.contains("template stage policy (round 1)"), "{e:?}");
        let e = expand(&specs(&BLOCK.replace("model = \"${sft}\"", "model = \"${sft@prev}\""))).unwrap_err();
        assert!(e.1.contains("applies to the block's template stages"), "{e:?}");
        let e = expand(&specs(&BLOCK.replace("source = \"round${round}\"", "source = \"${pairs@all}\""))).unwrap_err();
        assert!(e.1.contains("element of an array"), "{e:?}");
        let e = expand(&specs(&BLOCK.replace("initial = { policy = \"sft\" }", "initial = { nothing = \"sft\" }"))).unwrap_err();
        assert!(e.1.contains("not a template stage"), "{e:?}");
        let e = expand(&specs(&BLOCK.replace("kind = \"rounds\"", "kind = \"sft\""))).unwrap_err();
        assert!(e.1.contains("belong to a `kind = \"rounds\"` block"), "{e:?}");
    }

    #[test]
    fn until_round_lets_two_template_stages_share_a_name() {
        let text = BLOCK.replace(
            "[[stages.template]]\nname = \"policy\"\nkind = \"rejection_sampling\"\n",
            "[[stages.template]]\nname = \"policy\"\nkind = \"ppo\"\nfrom_round = 3\n[stages.template.config]\np = \"${policy@prev}\"\n\n[[stages.template]]\nname = \"policy\"\nkind = \"rejection_sampling\"\nuntil_round = 2\n",
        );
        let out = expand(&specs(&text)).unwrap();
        let kinds: Vec<(&str, &str)> = out.iter().map(|s| (s.name.as_str(), s.kind.as_str())).collect();
        assert_eq!(kinds[2], ("policy_v1", "rejection_sampling"));
        assert_eq!(kinds[5], ("policy_v2", "rejection_sampling"));
        assert_eq!(kinds[8], ("policy_v3", "ppo"));
        assert_eq!(out[8].config["p"].as_str(), Some("${policy_v2}"));
    }
}
