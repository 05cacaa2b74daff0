//! Makes `liandan-train` start without `LD_LIBRARY_PATH`: embeds an rpath to the
//! libtorch it was built against, and links `libtorch_cuda` even though no
//! symbol of it is referenced directly (otherwise `--as-needed` drops it and
//! CUDA is silently unavailable on GPU machines).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}");
        if Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
