//! Compiles `native/bridge.cpp` against the libtorch headers torch-sys found (its `links = "tch"`
//! metadata gives the lib folder as `DEP_TCH_LIBTORCH_LIB`; the headers sit beside it in
//! `include/`), plus the few Gloo headers `ProcessGroupGloo.hpp` includes, vendored in `vendor/`
//! (the torch wheel ships Gloo compiled into libtorch_cpu but not its headers).
//!
//! NCCL: when libtorch has CUDA (`libtorch_cuda.so`) and the CUDA runtime, CRT, CCCL and NCCL
//! headers are found (`RLHF_CUDA_INCLUDE`, colon-separated, else the `nvidia/` wheels beside
//! torch's: scripts/setup installs the two header-only ones the torch wheel lacks),
//! `native/nccl.cpp` binds `ProcessGroupNCCL` and the crate is built with `cfg(rlhf_nccl)`;
//! otherwise `native/nccl_stub.cpp` says NCCL is not built in.
//!
//! Also bakes the libtorch rpath into this crate's test binaries, as `build/torch_rpath.rs` does
//! for the others.
use std::path::{Path, PathBuf};

/// The include folders holding the CUDA and NCCL headers `ProcessGroupNCCL.hpp` needs, if all are there.
fn cuda_includes(lib: &Path) -> Option<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = match std::env::var("RLHF_CUDA_INCLUDE") {
        Ok(v) => v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
        Err(_) => {
            let nvidia = lib.parent()?.parent()?.join("nvidia");
            println!("cargo:rerun-if-changed={}", nvidia.display());
            let mut d: Vec<PathBuf> =
                std::fs::read_dir(&nvidia).ok()?.flatten().map(|e| e.path().join("include")).filter(|p| p.is_dir()).collect();
            d.sort();
            d
        }
    };
    let has = |f: &str| dirs.iter().any(|d| d.join(f).exists());
    let needed = ["cuda_runtime_api.h", "crt/host_config.h", "nv/target", "nccl.h"];
    (lib.join("libtorch_cuda.so").exists() && needed.iter().all(|f| has(f))).then_some(dirs)
}

fn main() {
    for f in ["native/bridge.cpp", "native/bridge.h", "native/kernels.cpp", "native/nccl.cpp", "native/nccl_stub.cpp", "vendor"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=RLHF_CUDA_INCLUDE");
    println!("cargo::rustc-check-cfg=cfg(rlhf_nccl)");
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB"));
    let root = lib.parent().expect("libtorch lib folder has a parent").to_path_buf();
    // The PyPI wheels (torch >= 2.7) and the libtorch cxx11 zips use the new ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .pic(true)
            .warnings(false)
            .include("vendor")
            .include("native")
            .include(root.join("include"))
            .include(root.join("include/torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .flag("-DGLOG_USE_GLOG_EXPORT");
        b
    };
    let mut bridge = base();
    bridge.define("USE_C10D_GLOO", None).file("native/bridge.cpp").file("native/kernels.cpp");
    match cuda_includes(&lib) {
        Some(dirs) => {
            let mut nccl = base();
            nccl.define("USE_C10D_NCCL", None).define("USE_CUDA", None).file("native/nccl.cpp");
            for d in &dirs {
                nccl.include(d);
            }
            nccl.compile("rlhf_c10d_nccl");
            println!("cargo:rustc-cfg=rlhf_nccl");
            println!("cargo:rustc-link-lib=torch_cuda");
        }
        None => {
            bridge.file("native/nccl_stub.cpp");
            println!("cargo:warning=NCCL headers not found: distributed runs use Gloo only (CUDA tensors through host memory)");
        }
    }
    bridge.compile("rlhf_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
