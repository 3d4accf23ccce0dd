//! Multi-process training on PyTorch's own distributed engine, c10d: the `TCPStore` rendezvous
//! and a Gloo process group, reached through a small C ABI (`native/bridge.cpp`, the one place
//! with C++), launched by torchrun:
//!
//! ```text
//! torchrun --no-python --nproc-per-node 2 target/release/rlhf sft ...
//! ```
//!
//! [`init_from_env`] reads torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and
//! `MASTER_PORT` (and, under torchrun, joins the agent's store as torch's `env://` does); without
//! them nothing is set up and every stage runs in one process as before. The stages then ask
//! [`get`] for the process-wide [`Dist`].
//!
//! Every collective has a timeout (`RLHF_DIST_TIMEOUT`, seconds, default 600). When one fails
//! (a peer closed its connection, or the timeout passed) the error names the rank at fault: each
//! rank publishes a heartbeat and the number of the collective it is in to the store, so the
//! survivors can tell a dead rank (its heartbeat stopped) from a hung or late one (alive, behind).
mod ffi;

pub use ffi::ReduceOp;

/// Kernels libtorch has and tch 0.24 does not bind (compiled in `native/kernels.cpp`).
pub mod kernels {
    pub use crate::ffi::{flash_varlen, release_grad};
}
use ffi::{Group, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("distributed setup: {0}")]
    Setup(String),
    #[error("rank {rank}: {op} (collective #{seq}) failed: {msg}{diagnosis}")]
    Collective { rank: i64, op: &'static str, seq: u64, msg: String, diagnosis: String },
    #[error("distributed: {0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, DistError>;

/// What torchrun (or SLURM through it) tells each process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: i64,
    pub world_size: i64,
    pub local_rank: i64,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`): every rank joins
    /// as a client, under the attempt's prefix.
    pub agent_store: Option<String>,
}

impl LaunchEnv {
    /// Reads the launch variables through `var`; `Ok(None)` when `WORLD_SIZE` is unset (a plain
    /// single-process run).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<LaunchEnv>> {
        let Some(world) = var("WORLD_SIZE") else { return Ok(None) };
        let int = |name: &str, v: Option<String>| -> Result<i64> {
            let v = v.ok_or_else(|| DistError::Setup(format!("WORLD_SIZE is set but {name} is not (launch with torchrun)")))?;
            v.trim().parse::<i64>().map_err(|_| DistError::Setup(format!("{name}={v:?} is not an integer")))
        };
        let world_size = int("WORLD_SIZE", Some(world))?;
        let rank = int("RANK", var("RANK"))?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => int("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        if world_size < 1 || rank < 0 || rank >= world_size {
            return Err(DistError::Setup(format!("RANK={rank} does not fit WORLD_SIZE={world_size}")));
        }
        let master_addr = var("MASTER_ADDR").ok_or_else(|| DistError::Setup("WORLD_SIZE is set but MASTER_ADDR is not".into()))?;
        let port = int("MASTER_PORT", var("MASTER_PORT"))?;
        let master_port = u16::try_from(port).map_err(|_| DistError::Setup(format!("MASTER_PORT={port} is not a port")))?;
        let agent_store = (var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"))
            .then(|| var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into()));
        Ok(Some(LaunchEnv { rank, world_size, local_rank, master_addr, master_port, agent_store }))
    }
}

/// The collective a rank is in, published with its heartbeat.
struct Progress {
    seq: AtomicU64,
    op: Mutex<&'static str>,
}

/// One process of a distributed run: its rank, the process group and the store.
pub struct Dist {
    pub rank: i64,
    pub world_size: i64,
    pub local_rank: i64,
    timeout: Duration,
    group: Group,
    /// NCCL, for CUDA tensors, when built in and a GPU is present (`RLHF_DIST_BACKEND=gloo`
    /// turns it off).
    nccl: Option<Group>,
    store: Arc<Store>,
    progress: Arc<Progress>,
    leader_pid: u32,
    stop: Arc<AtomicBool>,
}

static DIST: OnceLock<Option<Dist>> = OnceLock::new();

/// The collective timeout: `RLHF_DIST_TIMEOUT` seconds, default 600.
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var("RLHF_DIST_TIMEOUT") {
        Ok(v) => {
            let s: f64 = v.trim().parse().map_err(|_| DistError::Setup(format!("RLHF_DIST_TIMEOUT={v:?} is not a number of seconds")))?;
            if !(s > 0.0) {
                return Err(DistError::Setup(format!("RLHF_DIST_TIMEOUT={v:?} must be positive")));
            }
            Ok(Duration::from_secs_f64(s))
        }
        Err(_) => Ok(Duration::from_secs(600)),
    }
}

/// Sets up the process-wide [`Dist`] from torchrun's variables (once; later calls return the
/// first result). `Ok(None)`: not launched by torchrun.
pub fn init_from_env() -> Result<Option<&'static Dist>> {
    if let Some(d) = DIST.get() {
        return Ok(d.as_ref());
    }
    let env = LaunchEnv::from_vars(|k| std::env::var(k).ok())?;
    let dist = match env {
        Some(env) => Some(Dist::connect(&env, timeout_from_env()?)?),
        None => None,
    };
    let _ = DIST.set(dist);
    Ok(DIST.get().and_then(|d| d.as_ref()))
}

/// The process-wide [`Dist`], when [`init_from_env`] set one up.
pub fn get() -> Option<&'static Dist> {
    DIST.get().and_then(|d| d.as_ref())
}

/// This process's rank (0 without a distributed run).
pub fn rank() -> i64 {
    get().map_or(0, |d| d.rank)
}

/// The number of processes (1 without a distributed run).
pub fn world_size() -> i64 {
    get().map_or(1, |d| d.world_size)
}

/// Whether this process logs, writes shared files and shows progress: rank 0, or a plain run.
pub fn is_main() -> bool {
    rank() == 0
}

const HEARTBEAT: Duration = Duration::from_millis(500);

impl Dist {
    /// Joins the store and builds the Gloo process group (blocks until every rank has joined,
    /// or the timeout passes).
    pub fn connect(env: &LaunchEnv, timeout: Duration) -> Result<Dist> {
        let timeout_ms = timeout.as_millis() as i64;
        let (is_server, prefix) = match &env.agent_store {
            Some(attempt) => (false, format!("/worker/attempt_{attempt}/rlhf/")),
            None => (env.rank == 0, "rlhf/".to_string()),
        };
        let where_ = format!("{}:{}", env.master_addr, env.master_port);
        let store = Store::new(&env.master_addr, env.master_port, is_server, env.world_size as i32, timeout_ms, &prefix)
            .map_err(|e| DistError::Setup(format!("rank {}: cannot reach the store at {where_}: {e}", env.rank)))?;
        let group = Group::gloo(&store, "gloo/", env.rank as i32, env.world_size as i32, timeout_ms)
            .map_err(|e| DistError::Setup(format!("rank {}: the Gloo process group did not form within {timeout:?}: {e}", env.rank)))?;
        let nccl = match std::env::var("RLHF_DIST_BACKEND").as_deref() {
            Ok("gloo") => None,
            Ok("nccl") | Err(_) if Group::nccl_built_in() && tch::Cuda::is_available() => Some(
                Group::nccl(&store, "nccl/", env.rank as i32, env.world_size as i32, timeout_ms)
                    .map_err(|e| DistError::Setup(format!("rank {}: the NCCL process group: {e}", env.rank)))?,
            ),
            Ok("nccl") => {
                return Err(DistError::Setup(format!(
                    "RLHF_DIST_BACKEND=nccl, but {}",
                    if Group::nccl_built_in() { "no CUDA device is visible" } else { "this build has no NCCL (see scripts/setup)" }
                )))
            }
            Ok(other) if other != "auto" => return Err(DistError::Setup(format!("RLHF_DIST_BACKEND={other:?}: use gloo, nccl or auto"))),
            _ => None,
        };
        if env.rank == 0 {
            store.set("leader_pid", std::process::id().to_string().as_bytes()).map_err(DistError::Setup)?;
        }
        let pid = store.get("leader_pid").map_err(DistError::Setup)?;
        let leader_pid = String::from_utf8_lossy(&pid).parse().map_err(|_| DistError::Setup("bad leader_pid in the store".into()))?;
        let progress = Arc::new(Progress { seq: AtomicU64::new(0), op: Mutex::new("start") });
        let stop = Arc::new(AtomicBool::new(false));
        // The heartbeat has its own store connection, so a rank blocked in a collective keeps
        // beating, and a dead or stopped one goes quiet.
        let hb_store = Store::new(&env.master_addr, env.master_port, false, env.world_size as i32, timeout_ms, &prefix)
            .map_err(|e| DistError::Setup(format!("rank {}: heartbeat store: {e}", env.rank)))?;
        {
            let (progress, stop, rank) = (progress.clone(), stop.clone(), env.rank);
            std::thread::Builder::new()
                .name(format!("rlhf-heartbeat-{rank}"))
                .spawn(move || {
                    let mut beat = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        beat += 1;
                        let op = *progress.op.lock().unwrap_or_else(|p| p.into_inner());
                        let v = format!("{beat} {} {op}", progress.seq.load(Ordering::Relaxed));
                        if hb_store.set(&format!("hb/{rank}"), v.as_bytes()).is_err() {
                            break;
                        }
                        std::thread::sleep(HEARTBEAT);
                    }
                })
                .map_err(|e| DistError::Setup(format!("heartbeat thread: {e}")))?;
        }
        tracing::debug!(rank = env.rank, world = env.world_size, "joined the process group at {where_}");
        Ok(Dist {
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            timeout,
            group,
            nccl,
            store: Arc::new(store),
            progress,
            leader_pid,
            stop,
        })
    }

    /// Rank 0's process id: the suffix of temp folders every rank writes into.
    pub fn leader_pid(&self) -> u32 {
        self.leader_pid
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The device rank `local_rank` trains on when the config asks for `cuda`.
    pub fn cuda_device(&self) -> Device {
        Device::Cuda(self.local_rank as usize)
    }

    fn timeout_ms(&self) -> i64 {
        self.timeout.as_millis() as i64
    }

    /// The backend in use for tensors on `device`: `nccl` or `gloo`.
    pub fn backend(&self, device: Device) -> &'static str {
        match (device, &self.nccl) {
            (Device::Cuda(_), Some(_)) => "nccl",
            _ => "gloo",
        }
    }

    /// Runs collective `op` on the group for `device` (NCCL for CUDA tensors when present, else
    /// Gloo), numbering it; on failure, names the rank(s) at fault.
    fn collective(&self, op: &'static str, device: Device, f: impl FnOnce(&Group, i64) -> std::result::Result<(), String>) -> Result<()> {
        let seq = self.progress.seq.fetch_add(1, Ordering::Relaxed) + 1;
        *self.progress.op.lock().unwrap_or_else(|p| p.into_inner()) = op;
        let group = match (device, &self.nccl) {
            (Device::Cuda(_), Some(n)) => n,
            _ => &self.group,
        };
        f(group, self.timeout_ms()).map_err(|msg| DistError::Collective {
            rank: self.rank,
            op,
            seq,
            msg: first_line(&msg),
            diagnosis: self.diagnose(seq),
        })
    }

    /// Who is at fault: reads every other rank's heartbeat twice, a few beats apart.
    fn diagnose(&self, seq: u64) -> String {
        let read = |r: i64| -> Option<(u64, u64, String)> {
            let key = format!("hb/{r}");
            if !self.store.check(&key).ok()? {
                return None;
            }
            let v = String::from_utf8_lossy(&self.store.get(&key).ok()?).to_string();
            let mut it = v.splitn(3, ' ');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next().unwrap_or("").to_string()))
        };
        let others: Vec<i64> = (0..self.world_size).filter(|&r| r != self.rank).collect();
        let first: Vec<_> = others.iter().map(|&r| read(r)).collect();
        if first.iter().all(|x| x.is_none()) {
            return "; the store cannot be read (the rank hosting it may be gone)".into();
        }
        std::thread::sleep(HEARTBEAT * 5);
        let mut found = Vec::new();
        for (&r, before) in others.iter().zip(first) {
            match (before, read(r)) {
                (Some((b0, ..)), Some((b1, s1, op1))) if b1 == b0 => found.push(format!(
                    "rank {r} has stopped (no heartbeat for {:.1} s; last in collective #{s1}, {op1})",
                    (HEARTBEAT * 5).as_secs_f64()
                )),
                (_, Some((_, s1, op1))) if s1 < seq => found.push(format!(
                    "rank {r} is alive but behind: in collective #{s1} ({op1}), not #{seq} (hung, or slower than the timeout)"
                )),
                (_, None) => found.push(format!("rank {r} cannot be reached through the store")),
                _ => {}
            }
        }
        if found.is_empty() {
            "; every other rank is alive and at this collective".into()
        } else {
            format!("; {}", found.join("; "))
        }
    }

    /// Sums (or max/min) `t` over the ranks, in place. A CUDA tensor goes through NCCL when it
    /// is built in, else through a host copy (Gloo works on host memory).
    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        check_dense(t, "all_reduce")?;
        if self.direct(t) {
            return self.collective("all_reduce", t.device(), |g, ms| g.all_reduce(t, op, ms));
        }
        let host = on_host(t);
        self.collective("all_reduce", Device::Cpu, |g, ms| g.all_reduce(&host, op, ms))?;
        back(t, &host)
    }

    /// Whether `t` goes to its group as it is (host tensors, CUDA tensors with NCCL).
    fn direct(&self, t: &Tensor) -> bool {
        t.device() == Device::Cpu || self.backend(t.device()) == "nccl"
    }

    /// Sums `values` over the ranks (in f64, in place).
    pub fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        let t = Tensor::from_slice(values);
        self.all_reduce(&t, ReduceOp::Sum)?;
        let out = Vec::<f64>::try_from(&t).map_err(|e| DistError::Usage(e.to_string()))?;
        values.copy_from_slice(&out);
        Ok(())
    }

    pub fn broadcast(&self, t: &Tensor, root: i64) -> Result<()> {
        check_dense(t, "broadcast")?;
        if self.direct(t) {
            return self.collective("broadcast", t.device(), |g, ms| g.broadcast(t, root as i32, ms));
        }
        let host = on_host(t);
        self.collective("broadcast", Device::Cpu, |g, ms| g.broadcast(&host, root as i32, ms))?;
        back(t, &host)
    }

    /// `outputs[i]` receives rank i's `input` (one output per rank, each shaped as `input`).
    pub fn all_gather(&self, outputs: &[Tensor], input: &Tensor) -> Result<()> {
        if outputs.len() as i64 != self.world_size {
            return Err(DistError::Usage(format!("all_gather wants {} outputs, got {}", self.world_size, outputs.len())));
        }
        check_dense(input, "all_gather")?;
        if self.direct(input) && outputs.iter().all(|o| o.device() == input.device()) {
            return self.collective("all_gather", input.device(), |g, ms| g.all_gather(outputs, input, ms));
        }
        let (input_host, outs_host): (Tensor, Vec<Tensor>) = (on_host(input), outputs.iter().map(on_host).collect());
        self.collective("all_gather", Device::Cpu, |g, ms| g.all_gather(&outs_host, &input_host, ms))?;
        outputs.iter().zip(&outs_host).try_for_each(|(o, h)| back(o, h))
    }

    /// `output` receives the sum over ranks of their `inputs[self.rank]`.
    pub fn reduce_scatter(&self, output: &Tensor, inputs: &[Tensor]) -> Result<()> {
        if inputs.len() as i64 != self.world_size {
            return Err(DistError::Usage(format!("reduce_scatter wants {} inputs, got {}", self.world_size, inputs.len())));
        }
        for t in inputs {
            check_dense(t, "reduce_scatter")?;
        }
        if self.direct(output) && inputs.iter().all(|i| i.device() == output.device()) {
            return self.collective("reduce_scatter", output.device(), |g, ms| g.reduce_scatter(output, inputs, ms));
        }
        let (out_host, ins_host): (Tensor, Vec<Tensor>) = (on_host(output), inputs.iter().map(on_host).collect());
        self.collective("reduce_scatter", Device::Cpu, |g, ms| g.reduce_scatter(&out_host, &ins_host, ms))?;
        back(output, &out_host)
    }

    pub fn barrier(&self) -> Result<()> {
        self.collective("barrier", Device::Cpu, |g, ms| g.barrier(ms))
    }

    /// Every rank's `bytes`, in rank order (lengths may differ).
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let len = Tensor::from_slice(&[bytes.len() as i64]);
        let lens: Vec<Tensor> = (0..self.world_size).map(|_| Tensor::zeros([1], (Kind::Int64, Device::Cpu))).collect();
        self.all_gather(&lens, &len)?;
        let lens: Vec<i64> = lens.iter().map(|t| t.int64_value(&[0])).collect();
        let max = lens.iter().copied().max().unwrap_or(0).max(1);
        let mut padded = bytes.to_vec();
        padded.resize(max as usize, 0);
        let input = Tensor::from_slice(&padded);
        let outs: Vec<Tensor> = (0..self.world_size).map(|_| Tensor::zeros([max], (Kind::Uint8, Device::Cpu))).collect();
        self.all_gather(&outs, &input)?;
        outs.iter().zip(lens).map(|(t, n)| Vec::<u8>::try_from(&t.narrow(0, 0, n)).map_err(|e| DistError::Usage(e.to_string()))).collect()
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `t` itself on the host, else a host copy (the Gloo process group works on host memory).
fn on_host(t: &Tensor) -> Tensor {
    match t.device() {
        Device::Cpu => t.shallow_clone(),
        _ => t.to_device(Device::Cpu),
    }
}

/// Copies a collective's host result back into a device tensor.
fn back(t: &Tensor, host: &Tensor) -> Result<()> {
    if t.device() != Device::Cpu {
        tch::no_grad(|| t.shallow_clone().f_copy_(host)).map_err(|e| DistError::Usage(e.to_string()))?;
    }
    Ok(())
}

fn check_dense(t: &Tensor, op: &str) -> Result<()> {
    if !t.is_contiguous() {
        return Err(DistError::Usage(format!("{op} wants a contiguous tensor")));
    }
    Ok(())
}

fn first_line(msg: &str) -> String {
    // c10d appends a C++ backtrace after the message; the first lines say what happened.
    let mut lines: Vec<&str> = msg.lines().take_while(|l| !l.starts_with("Exception raised from")).collect();
    lines.truncate(4);
    lines.join(" ").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(kv: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| kv.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn torchrun_variables_are_read_and_checked() {
        assert_eq!(LaunchEnv::from_vars(vars(&[])).unwrap(), None);
        let env = LaunchEnv::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank, env.master_port), (3, 4, 1, 29500));
        assert_eq!(env.agent_store.as_deref(), Some("2"));
        for (bad, what) in [
            (&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")][..], "RANK"),
            (&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")][..], "does not fit"),
            (&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1")][..], "MASTER_ADDR"),
            (&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "70000")][..], "not a port"),
            (&[("WORLD_SIZE", "two"), ("RANK", "0")][..], "not an integer"),
        ] {
            let e = LaunchEnv::from_vars(vars(bad)).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn c10d_messages_lose_their_backtrace() {
        let m = "Connection closed by peer [127.0.0.1]:1234\nException raised from recv at ...\nframe #0: ...";
        assert_eq!(first_line(m), "Connection closed by peer [127.0.0.1]:1234");
    }
}
