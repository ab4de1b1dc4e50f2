//! Generates the tonic client/server code and a descriptor set (for gRPC reflection). protoc comes
//! from `protoc-bin-vendored`: nothing needs to be installed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/switchboard/runtime/v1/runtime.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("switchboard_runtime_descriptor.bin"))
        .compile_with_config(config, &[proto], &["proto"])?;
    Ok(())
}
