//! Compiles `proto/runtime/v1/api.proto` (the part of the Kubernetes CRI the `cri` suite uses)
//! into a client: the suite talks to containerd's CRI plugin as the kubelet does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
