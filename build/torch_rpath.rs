//! Shared build script for every crate whose binaries or tests link libtorch.
//!
//! torch-sys (`links = "tch"`) exports the libtorch lib folder as `DEP_TCH_LIBTORCH_LIB`. We
//! bake it into the rpath so `target/release/rlhf` runs in a plain shell, and we force
//! `libtorch_cuda.so` into DT_NEEDED with `--no-as-needed`: nothing references its symbols
//! directly, so the default `--as-needed` would drop it and CUDA would stay invisible at run time.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    for cuda_lib in ["libtorch_cuda.so", "libc10_cuda.so"] {
        let path = Path::new(&lib).join(cuda_lib);
        if path.exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,{},--as-needed", path.display());
        }
    }
}
