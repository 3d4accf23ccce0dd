//! The C ABI of `native/bridge.cpp`. Every call returns 0, or 1 with a malloc'd message in `err`.
#![allow(unsafe_code)]
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use tch::Tensor;

extern "C" {
    fn rlhf_c10d_free_string(s: *mut c_char);
    fn rlhf_c10d_free_bytes(v: *mut u8);
    fn rlhf_c10d_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world_size: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rlhf_c10d_store_free(store: *mut c_void);
    fn rlhf_c10d_store_set(store: *mut c_void, key: *const c_char, value: *const u8, len: usize, err: *mut *mut c_char) -> c_int;
    fn rlhf_c10d_store_get(store: *mut c_void, key: *const c_char, value: *mut *mut u8, len: *mut usize, err: *mut *mut c_char) -> c_int;
    fn rlhf_c10d_store_check(store: *mut c_void, key: *const c_char, exists: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rlhf_c10d_gloo_new(
        store: *mut c_void,
        prefix: *const c_char,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rlhf_c10d_group_free(group: *mut c_void);
    fn rlhf_c10d_nccl_available() -> c_int;
    fn rlhf_c10d_nccl_new(
        store: *mut c_void,
        prefix: *const c_char,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rlhf_c10d_all_reduce(group: *mut c_void, tensor: *const c_void, op: c_int, timeout_ms: i64, err: *mut *mut c_char) -> c_int;
    fn rlhf_c10d_broadcast(group: *mut c_void, tensor: *const c_void, root: c_int, timeout_ms: i64, err: *mut *mut c_char) -> c_int;
    fn rlhf_c10d_all_gather(
        group: *mut c_void,
        outputs: *const *const c_void,
        input: *const c_void,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rlhf_c10d_reduce_scatter(
        group: *mut c_void,
        output: *const c_void,
        inputs: *const *const c_void,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rlhf_c10d_barrier(group: *mut c_void, timeout_ms: i64, err: *mut *mut c_char) -> c_int;
}

/// Runs one bridge call and turns its error string into `Err`.
fn call(f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), String> {
    let mut err: *mut c_char = std::ptr::null_mut();
    if f(&mut err) == 0 {
        return Ok(());
    }
    if err.is_null() {
        return Err("c10d call failed (no message)".into());
    }
    // SAFETY: a non-null `err` is a NUL-terminated string malloc'd by the bridge, freed once here.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { rlhf_c10d_free_string(err) };
    Err(msg)
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} has a NUL byte"))
}

fn tensor_ptr(t: &Tensor) -> *const c_void {
    t.as_ptr() as *const c_void
}

/// A c10d `TCPStore` (behind a `PrefixStore`): the server on the rank that hosts it, a client
/// elsewhere. c10d's store client serialises its own operations, so it may be shared.
pub struct Store(*mut c_void);

// SAFETY: c10d::TCPStore guards every operation with its own mutex.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    pub fn new(host: &str, port: u16, is_server: bool, world_size: i32, timeout_ms: i64, prefix: &str) -> Result<Store, String> {
        let (host, prefix) = (cstr(host)?, cstr(prefix)?);
        let mut out = std::ptr::null_mut();
        // SAFETY: valid C strings and out-pointer for the duration of the call.
        call(|err| unsafe {
            rlhf_c10d_store_new(host.as_ptr(), port, is_server as c_int, world_size, timeout_ms, prefix.as_ptr(), &mut out, err)
        })?;
        Ok(Store(out))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = cstr(key)?;
        // SAFETY: the store is live; key and value outlive the call.
        call(|err| unsafe { rlhf_c10d_store_set(self.0, key.as_ptr(), value.as_ptr(), value.len(), err) })
    }

    /// Waits for `key` up to the store's timeout.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let key = cstr(key)?;
        let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the store is live; the bridge fills ptr/len with a malloc'd buffer on success.
        call(|err| unsafe { rlhf_c10d_store_get(self.0, key.as_ptr(), &mut ptr, &mut len, err) })?;
        // SAFETY: `ptr` holds `len` bytes written by the bridge; freed once after the copy.
        let v = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
        unsafe { rlhf_c10d_free_bytes(ptr) };
        Ok(v)
    }

    pub fn check(&self, key: &str) -> Result<bool, String> {
        let key = cstr(key)?;
        let mut exists = 0;
        // SAFETY: the store is live; key outlives the call.
        call(|err| unsafe { rlhf_c10d_store_check(self.0, key.as_ptr(), &mut exists, err) })?;
        Ok(exists != 0)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by rlhf_c10d_store_new, dropped once.
        unsafe { rlhf_c10d_store_free(self.0) }
    }
}

/// A c10d process group (Gloo). Collectives are called from one thread at a time (`&mut`
/// through the owner's lock is not needed: the owner calls them in program order).
pub struct Group(*mut c_void);

// SAFETY: the group is only used from the thread that runs the training loop; Send lets the
// process-wide handle live in a static.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

/// Reduction of [`Group::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum = 0,
    Max = 1,
    Min = 2,
}

impl Group {
    pub fn gloo(store: &Store, prefix: &str, rank: i32, size: i32, timeout_ms: i64) -> Result<Group, String> {
        let prefix = cstr(prefix)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: the store is live; the bridge keeps its own reference to it.
        call(|err| unsafe { rlhf_c10d_gloo_new(store.0, prefix.as_ptr(), rank, size, timeout_ms, &mut out, err) })?;
        Ok(Group(out))
    }

    /// Whether this build has the NCCL process group (see build.rs).
    pub fn nccl_built_in() -> bool {
        // SAFETY: no arguments; returns a constant.
        unsafe { rlhf_c10d_nccl_available() != 0 }
    }

    /// An NCCL process group over `store` (communicators are made at the first collective, on
    /// the device of its tensors).
    pub fn nccl(store: &Store, prefix: &str, rank: i32, size: i32, timeout_ms: i64) -> Result<Group, String> {
        let prefix = cstr(prefix)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: as gloo.
        call(|err| unsafe { rlhf_c10d_nccl_new(store.0, prefix.as_ptr(), rank, size, timeout_ms, &mut out, err) })?;
        Ok(Group(out))
    }

    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp, timeout_ms: i64) -> Result<(), String> {
        // SAFETY: `t` is a live at::Tensor for the duration of the (blocking) call.
        call(|err| unsafe { rlhf_c10d_all_reduce(self.0, tensor_ptr(t), op as c_int, timeout_ms, err) })
    }

    pub fn broadcast(&self, t: &Tensor, root: i32, timeout_ms: i64) -> Result<(), String> {
        // SAFETY: as all_reduce.
        call(|err| unsafe { rlhf_c10d_broadcast(self.0, tensor_ptr(t), root, timeout_ms, err) })
    }

    pub fn all_gather(&self, outputs: &[Tensor], input: &Tensor, timeout_ms: i64) -> Result<(), String> {
        let ptrs: Vec<*const c_void> = outputs.iter().map(tensor_ptr).collect();
        // SAFETY: one live output per rank (the caller checks the count), all alive for the call.
        call(|err| unsafe { rlhf_c10d_all_gather(self.0, ptrs.as_ptr(), tensor_ptr(input), timeout_ms, err) })
    }

    pub fn reduce_scatter(&self, output: &Tensor, inputs: &[Tensor], timeout_ms: i64) -> Result<(), String> {
        let ptrs: Vec<*const c_void> = inputs.iter().map(tensor_ptr).collect();
        // SAFETY: as all_gather.
        call(|err| unsafe { rlhf_c10d_reduce_scatter(self.0, tensor_ptr(output), ptrs.as_ptr(), timeout_ms, err) })
    }

    pub fn barrier(&self, timeout_ms: i64) -> Result<(), String> {
        // SAFETY: the group is live.
        call(|err| unsafe { rlhf_c10d_barrier(self.0, timeout_ms, err) })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by rlhf_c10d_gloo_new, dropped once.
        unsafe { rlhf_c10d_group_free(self.0) }
    }
}

extern "C" {
    fn rlhf_flash_varlen(
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        cu_seqlens: *const c_void,
        max_len: i64,
        scale: f64,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rlhf_release_grad(tensor: *mut c_void, err: *mut *mut c_char) -> c_int;
}

/// Drops `t`'s gradient (`zero_grad(set_to_none=True)`): `t.grad()` is undefined until the next
/// backward allocates it again.
pub fn release_grad(t: &Tensor) -> Result<(), String> {
    call(|err| unsafe { rlhf_release_grad(t.as_ptr() as *mut c_void, err) })
}

/// Variable-length causal FlashAttention (`at::_flash_attention_forward` with cumulative
/// sequence lengths): `q` `[N, H, hd]`, `k`/`v` `[N, KV, hd]`, `cu_seqlens` int32 `[S + 1]` on the
/// same CUDA device; returns `[N, H, hd]`, differentiable. Errors on a CPU tensor or an
/// unsupported dtype (the kernel takes fp16 and bf16).
pub fn flash_varlen(q: &Tensor, k: &Tensor, v: &Tensor, cu_seqlens: &Tensor, max_len: i64, scale: f64) -> Result<Tensor, String> {
    let mut out: *mut c_void = std::ptr::null_mut();
    call(|err| unsafe {
        rlhf_flash_varlen(tensor_ptr(q), tensor_ptr(k), tensor_ptr(v), tensor_ptr(cu_seqlens), max_len, scale, &mut out, err)
    })?;
    // SAFETY: on success the bridge returned a new heap `at::Tensor*` that nothing else owns;
    // tch's `Tensor` takes it over (and frees it on drop).
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}
