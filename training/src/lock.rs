//! An exclusive lock on a run folder, so that two runs never write into the same folder (one
//! run's metrics with the other's weights). The lock is an advisory `flock` on `DIR/.lock`, held
//! by an open file for as long as the [`RunLock`] lives; the kernel releases it when the process
//! ends in any way (SIGKILL included), so a stale lock of a dead process is taken over with no
//! clean-up. The file holds `{"pid": .., "host": ..}` of the holder, which a rejected run names.
//!
//! Within one process the lock is shared: taking it again on a folder this process already holds
//! (a pipeline holding its stage folder, then the stage's trainer taking it) returns another
//! handle on the same lock, released when the last handle is dropped. (`flock` locks belong to
//! an open file, so a second open in the same process would otherwise reject itself.)
use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The name of the lock file inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// Who holds a run folder, as written in its lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
}

impl LockHolder {
    /// This process.
    pub fn this_process() -> Self {
        LockHolder { pid: std::process::id(), host: host_name() }
    }
}

/// The machine's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else "unknown").
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

struct Held {
    /// Keeps the flock; released when the last [`RunLock`] of this folder drops.
    _file: File,
    path: PathBuf,
}

/// An exclusive lock on a run folder, held until dropped.
#[derive(Clone)]
pub struct RunLock {
    held: Arc<Held>,
}

impl std::fmt::Debug for RunLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLock").field("path", &self.held.path).finish()
    }
}

/// The locks this process holds, by canonical folder.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Held>>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, Weak<Held>>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

impl RunLock {
    /// [`RunLock::acquire`] on rank 0 of a distributed run (or in a plain run); the other ranks
    /// write into the folder rank 0 holds and take no lock (`None`).
    pub fn acquire_main(dir: &Path) -> Result<Option<RunLock>> {
        if distributed::is_main() {
            Self::acquire(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Creates `dir` if needed and locks it; fails at once with [`TrainError::Locked`] (naming the
    /// folder and the holder's pid and host) when another process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let key = dir.canonicalize().map_err(|e| TrainError::io(dir, e))?;
        let mut held = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.get(&key).and_then(Weak::upgrade) {
            return Ok(RunLock { held: h });
        }
        let path = dir.join(LOCK_FILE);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(TrainError::Locked { dir: dir.to_path_buf(), holder: read_holder(&path) }),
            Err(TryLockError::Error(e)) => return Err(TrainError::io(&path, e)),
        }
        let json = serde_json::to_string(&LockHolder::this_process()).expect("holder serialises");
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(json.as_bytes())?;
            f.sync_data()
        };
        write(&mut file).map_err(|e| TrainError::io(&path, e))?;
        let h = Arc::new(Held { _file: file, path });
        held.retain(|_, w| w.strong_count() > 0);
        held.insert(key, Arc::downgrade(&h));
        Ok(RunLock { held: h })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.held.path
    }
}

/// The holder written in a lock file; `None` while the holder has not written it yet (it writes
/// right after locking, so a few short retries cover that moment).
fn read_holder(path: &Path) -> Option<LockHolder> {
    for attempt in 0..5 {
        let mut text = String::new();
        if let Ok(mut f) = File::open(path) {
            let _ = f.read_to_string(&mut text);
        }
        if let Ok(h) = serde_json::from_str(&text) {
            return Some(h);
        }
        if attempt < 4 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_holder_and_is_shared_within_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let a = RunLock::acquire(&run).unwrap();
        let text = std::fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        let holder: LockHolder = serde_json::from_str(&text).unwrap();
        assert_eq!(holder, LockHolder::this_process());
        // A second handle in the same process shares the lock instead of rejecting itself.
        let b = RunLock::acquire(&run).unwrap();
        drop(a);
        // Still held by `b`: another open file cannot lock it.
        let f = File::open(run.join(LOCK_FILE)).unwrap();
        assert!(matches!(f.try_lock(), Err(TryLockError::WouldBlock)));
        drop(b);
        assert!(f.try_lock().is_ok(), "the last handle releases the lock");
    }

    #[test]
    fn a_held_folder_is_refused_naming_folder_pid_and_host() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        // Another holder: an open file with the lock taken (as another process would).
        let other = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(run.join(LOCK_FILE)).unwrap();
        other.try_lock().unwrap();
        std::fs::write(run.join(LOCK_FILE), r#"{"pid":4242,"host":"gpu-node-7"}"#).unwrap();
        let err = RunLock::acquire(&run).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TrainError::Locked { .. }), "{msg}");
        assert!(msg.contains(&run.display().to_string()) && msg.contains("4242") && msg.contains("gpu-node-7"), "{msg}");
        drop(other);
        // Released (as when the holder dies): taken over, and the file names this process.
        let _l = RunLock::acquire(&run).unwrap();
        let holder: LockHolder = serde_json::from_str(&std::fs::read_to_string(run.join(LOCK_FILE)).unwrap()).unwrap();
        assert_eq!(holder.pid, std::process::id());
    }
}
