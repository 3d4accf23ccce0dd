//! `rlhf plan --stage sft|reward|ppo --config FILE [--world-size N] [--gpu-memory 80GiB]`: the
//! bytes per device of a stage before it runs (training::plan), whether they fit, and the largest
//! micro-batch that does.
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use llama::{Config, DeviceSpec, Dtype};
use std::path::{Path, PathBuf};
use training::plan::{
    causal_lm_params, frozen_in_stage, kv_cache, largest_fitting, parse_bytes, trained, trunk_params, StagePlan, Training,
};
use training::TrainConfig;

#[derive(Clone, Copy, ValueEnum)]
pub enum PlanStage {
    Sft,
    Reward,
    Ppo,
}

#[derive(Args)]
pub struct PlanArgs {
    /// Which stage the config is for.
    #[arg(long, value_enum)]
    pub stage: PlanStage,
    /// The stage's TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value (as the stage commands take them).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Ranks of a distributed run (ZeRO divides the optimizer state by it).
    #[arg(long, default_value_t = 1)]
    pub world_size: i64,
    /// Memory of one device.
    #[arg(long, default_value = "80GiB")]
    pub gpu_memory: String,
    /// The shape of every model in the config (`7b`, `13b`, `70b`, ...) when its checkpoint folder
    /// is not on this machine.
    #[arg(long)]
    pub preset: Option<String>,
}

fn model_config(dir: Option<&Path>, preset: Option<&str>) -> Result<Config> {
    match (preset, dir) {
        (Some(p), _) => Ok(Config::preset(p)?),
        (None, Some(d)) => llama::checkpoint::load_config(d)
            .with_context(|| format!("{}: no config.json here (pass --preset to plan by shape)", d.display())),
        (None, None) => anyhow::bail!("the config names no model: pass --preset"),
    }
}

/// Bytes per element of the compute dtype the run will use: the config's `dtype`, else fp32 on
/// CPU and bf16 on a GPU (`auto` is planned for a GPU).
fn dtype_bytes(t: &TrainConfig) -> f64 {
    match (t.dtype, t.device) {
        (Some(Dtype::Float32), _) | (None, DeviceSpec::Cpu) => 4.0,
        _ => 2.0,
    }
}

fn training_of(t: &TrainConfig, world: i64, seq_len: i64, head_positions: i64) -> Training {
    Training {
        dtype_bytes: dtype_bytes(t),
        micro_batch: t.micro_batch_size as i64,
        seq_len,
        head_positions,
        micro_batches_per_rank: (t.grad_accumulation as i64 + world - 1) / world,
        gradient_checkpointing: t.gradient_checkpointing,
        zero_stage: t.zero_stage,
        world_size: world,
        offload: t.optimizer_offload == training::config::Offload::Cpu,
        lora_params: None,
    }
}

pub fn run(a: PlanArgs) -> Result<()> {
    let budget = parse_bytes(&a.gpu_memory).map_err(anyhow::Error::msg)?;
    let preset = a.preset.as_deref();
    let w = a.world_size.max(1);
    // A plan for any micro-batch size, and the configured one.
    let (plan_for, configured): (Box<dyn Fn(i64) -> StagePlan>, i64) = match a.stage {
        PlanStage::Sft => {
            let c: sft::SftConfig = super::config::load(&a.config, &a.sets)?;
            let m = match (&c.model, &c.init_preset, preset) {
                (_, _, Some(p)) => Config::preset(p)?,
                (Some(d), _, None) => model_config(Some(d), None)?,
                (None, Some(p), None) => Config::preset(p)?,
                (None, None, None) => anyhow::bail!("the config names no model: pass --preset"),
            };
            let (t, seq) = (c.train.clone(), c.max_seq_len as i64);
            let mb = t.micro_batch_size as i64;
            let lora_params = c.lora.as_ref().map(|l| l.num_parameters(&m));
            (
                Box::new(move |b| {
                    let tr = Training { micro_batch: b, lora_params, ..training_of(&t, w, seq, seq) };
                    StagePlan::new(vec![trained("policy", &m, causal_lm_params(&m), true, &tr)], 0.0)
                }),
                mb,
            )
        }
        PlanStage::Reward => {
            let c: reward::RewardConfig = super::config::load(&a.config, &a.sets)?;
            let m = model_config(Some(&c.model), preset)?;
            let t = c.train.clone();
            // A pair is one row: the prompt and both replies (up to twice max_seq_len).
            let seq = 2 * c.max_seq_len as i64;
            let mb = t.micro_batch_size as i64;
            let lora_params = c.lora.as_ref().map(|l| l.num_parameters(&m) + m.hidden_size);
            (
                Box::new(move |b| {
                    let tr = Training { micro_batch: b, lora_params, ..training_of(&t, w, seq, 0) };
                    StagePlan::new(vec![trained("reward model", &m, trunk_params(&m) + m.hidden_size, false, &tr)], 0.0)
                }),
                mb,
            )
        }
        PlanStage::Ppo => {
            let c: ppo::PpoConfig = super::config::load(&a.config, &a.sets)?;
            let policy = model_config(Some(&c.policy), preset)?;
            let value_dir = c.value_model.clone().or(c.helpfulness_rm.clone()).or(c.safety_rm.clone());
            let value = model_config(value_dir.as_deref(), preset)?;
            let rms: Vec<Config> = [&c.helpfulness_rm, &c.safety_rm]
                .iter()
                .filter_map(|p| p.as_deref())
                .map(|p| model_config(Some(p), preset))
                .collect::<Result<_>>()?;
            let t = c.train.clone();
            let (prompt, new) = (c.max_prompt_len as i64, c.max_new_tokens as i64);
            let gen_batch = c.generation_batch_size as i64;
            let mb = t.micro_batch_size as i64;
            let lora = c.lora.clone();
            let offload_frozen = c.offload_frozen;
            (
                Box::new(move |b| {
                    let tr = Training { micro_batch: b, ..training_of(&t, w, prompt + new, new) };
                    let bytes = tr.dtype_bytes;
                    // Frozen: sharded under ZeRO-3, parked with offload_frozen, else whole.
                    let held =
                        |role: &str, m: &Config, params: i64, group: u8| frozen_in_stage(role, m, params, &tr, offload_frozen, group);
                    let tr_policy = Training { lora_params: lora.as_ref().map(|l| l.num_parameters(&policy)), ..tr.clone() };
                    let tr_value =
                        Training { lora_params: lora.as_ref().map(|l| l.num_parameters(&value) + value.hidden_size), ..tr.clone() };
                    let mut models = vec![
                        trained("policy", &policy, causal_lm_params(&policy), true, &tr_policy),
                        trained("value", &value, trunk_params(&value) + value.hidden_size, false, &tr_value),
                        held("reference", &policy, causal_lm_params(&policy), 1),
                    ];
                    for (i, r) in rms.iter().enumerate() {
                        models.push(held(
                            if i == 0 { "reward model 1" } else { "reward model 2" },
                            r,
                            trunk_params(r) + r.hidden_size,
                            // Offloaded reward models score one at a time.
                            2 + i as u8,
                        ));
                    }
                    StagePlan::new(models, kv_cache(&policy, gen_batch, prompt + new, bytes))
                }),
                mb,
            )
        }
    };
    let plan = plan_for(configured);
    let gb = |b: f64| b / 1e9;
    println!(
        "{:<16} {:>8} {:>9} {:>9} {:>10} {:>10} {:>12} {:>9} {:>8}",
        "model", "params", "weights", "grads", "fp32 sums", "optimizer", "activations", "logits", "host"
    );
    for m in &plan.models {
        println!(
            "{:<16} {:>7.2}B {:>8.1}G {:>8.1}G {:>9.1}G {:>9.1}G {:>11.1}G {:>8.1}G {:>7.1}G",
            m.role,
            m.params as f64 / 1e9,
            gb(m.weights),
            gb(m.gradients),
            gb(m.fp32_gradient_sums),
            gb(m.optimizer),
            gb(m.activations),
            gb(m.logits),
            gb(m.host)
        );
    }
    if plan.kv_cache > 0.0 {
        println!("generation KV cache {:.1} GB (not held while training)", gb(plan.kv_cache));
    }
    let fits = plan.device_peak <= budget;
    let largest = largest_fitting(budget, 4096, &plan_for);
    println!(
        "peak per device {:.1} GB of {:.1} GB ({}); host {:.1} GB; largest micro-batch that fits: {}",
        gb(plan.device_peak),
        gb(budget),
        if fits { "fits" } else { "does NOT fit" },
        gb(plan.host),
        largest.map_or("none".to_string(), |b| b.to_string())
    );
    println!(
        "{}",
        serde_json::json!({
            "fits": fits, "device_peak_bytes": plan.device_peak, "budget_bytes": budget, "host_bytes": plan.host,
            "micro_batch": configured, "largest_micro_batch": largest, "world_size": w, "plan": plan,
        })
    );
    Ok(())
}
