//! Compiles `native/bridge.cpp` against the libtorch headers torch-sys found (its `links = "tch"`
//! metadata gives the lib folder as `DEP_TCH_LIBTORCH_LIB`; the headers sit beside it in
//! `include/`), plus the few Gloo headers `ProcessGroupGloo.hpp` includes, vendored in `vendor/`
//! (the torch wheel ships Gloo compiled into libtorch_cpu but not its headers). Also bakes the
//! libtorch rpath into this crate's test binaries, as `build/torch_rpath.rs` does for the others.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=native/bridge.cpp");
    println!("cargo:rerun-if-changed=vendor");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB"));
    let root = lib.parent().expect("libtorch lib folder has a parent").to_path_buf();
    // The PyPI wheels (torch >= 2.7) and the libtorch cxx11 zips use the new ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include("vendor")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .define("USE_C10D_GLOO", None)
        .file("native/bridge.cpp")
        .compile("rlhf_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
