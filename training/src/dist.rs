//! The training layer's view of a distributed run ([`distributed`]): sums over the ranks and
//! barriers as [`TrainError`]s, and no-ops in one process.
use crate::error::{Result, TrainError};

fn err(e: distributed::DistError) -> TrainError {
    TrainError::Distributed(e.to_string())
}

/// Sums `values` over the ranks in place (nothing to do in one process).
pub fn sum_over_ranks(values: &mut [f64]) -> Result<()> {
    match distributed::get() {
        Some(d) if d.world_size > 1 => d.all_reduce_f64(values).map_err(err),
        _ => Ok(()),
    }
}

/// Waits for every rank (nothing to do in one process).
pub fn barrier() -> Result<()> {
    match distributed::get() {
        Some(d) if d.world_size > 1 => d.barrier().map_err(err),
        _ => Ok(()),
    }
}

/// Whether every rank's `ok` is true (each rank learns the same answer).
pub fn all_ok(ok: bool) -> Result<bool> {
    let mut v = [if ok { 0.0 } else { 1.0 }];
    sum_over_ranks(&mut v)?;
    Ok(v[0] == 0.0)
}

/// Rank 0's `bytes` on every rank.
pub fn from_main(bytes: &[u8]) -> Result<Vec<u8>> {
    match distributed::get() {
        Some(d) if d.world_size > 1 => Ok(d.all_gather_bytes(bytes).map_err(err)?.swap_remove(0)),
        _ => Ok(bytes.to_vec()),
    }
}

/// The suffix of temp folders every rank writes into: rank 0's pid (this process's in one).
pub fn leader_pid() -> u32 {
    distributed::get().map_or(std::process::id(), |d| d.leader_pid())
}

/// Runs `f` on rank 0 first, then (after a barrier) on the others: for steps that build a shared
/// file the first time (the token cache) and read it after. A failure on rank 0 stops every rank.
pub fn main_first<T, E: From<TrainError>>(mut f: impl FnMut() -> std::result::Result<T, E>) -> std::result::Result<T, E> {
    match distributed::get() {
        Some(d) if d.world_size > 1 => {
            let first = if d.rank == 0 { Some(f()) } else { None };
            if !all_ok(first.as_ref().is_none_or(|r| r.is_ok()))? {
                return match first {
                    Some(r) => r,
                    None => Err(TrainError::Distributed(format!("rank {}: rank 0 failed; stopping with it", d.rank)).into()),
                };
            }
            match first {
                Some(r) => r,
                None => f(),
            }
        }
        _ => f(),
    }
}

/// Every rank learns whether every rank's `r` succeeded; a rank whose own step failed returns its
/// error, the others an error saying that `what` failed elsewhere. A barrier in a run that works.
pub fn agree<E: From<TrainError>>(r: std::result::Result<(), E>, what: &str) -> std::result::Result<(), E> {
    if all_ok(r.is_ok())? {
        return Ok(());
    }
    r?;
    Err(TrainError::Distributed(format!("rank {}: another rank could not {what}; stopping with it", distributed::rank())).into())
}

/// The largest of each value over the ranks, in place (nothing to do in one process).
pub fn max_over_ranks(values: &mut [f64]) -> Result<()> {
    match distributed::get() {
        Some(d) if d.world_size > 1 => {
            let t = tch::Tensor::from_slice(values);
            d.all_reduce(&t, distributed::ReduceOp::Max).map_err(err)?;
            values.copy_from_slice(&Vec::<f64>::try_from(&t)?);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Every rank's `bytes`, in rank order (just this one in one process).
pub fn all_gather_bytes(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    match distributed::get() {
        Some(d) if d.world_size > 1 => d.all_gather_bytes(bytes).map_err(err),
        _ => Ok(vec![bytes.to_vec()]),
    }
}
