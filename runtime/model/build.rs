//! Embeds the libtorch library directory as an rpath so tests, benches and binaries of this crate
//! run without `LD_LIBRARY_PATH`. Crates that link tch into binaries repeat this (cargo passes
//! `rustc-link-arg` only to the package's own targets).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // On a CUDA build of libtorch the linker drops libtorch_cuda.so (--as-needed) and CUDA then
        // looks unavailable; force it in when it is there.
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
