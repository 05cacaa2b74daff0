//! Makes `liandan-train` start without `LD_LIBRARY_PATH`: embeds an rpath to the
//! libtorch it was built against, and links `libtorch_cuda` even though no
//! symbol of it is referenced directly (otherwise `--as-needed` drops it and
//! CUDA is silently unavailable on GPU machines). Also records the libtorch
//! version for `liandan-train --version` and `doctor`.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let mut version = String::from("unknown");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}");
        if Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
        // The PyTorch wheel keeps its version in torch/version.py beside lib/.
        let vfile = Path::new(&lib).join("..").join("version.py");
        println!("cargo:rerun-if-changed={}", vfile.display());
        if let Ok(text) = std::fs::read_to_string(&vfile) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("__version__ = ") {
                    version = v.trim().trim_matches('\'').trim_matches('"').to_string();
                }
            }
        }
    }
    println!("cargo:rustc-env=LIANDAN_LIBTORCH_VERSION={version}");
}
