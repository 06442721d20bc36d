//! Compiles `proto/coffer/agent/v1/agent.proto`. Client and server stubs are generated only for the
//! features that ask for them, so the host never compiles server code and the guest no client code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/coffer/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
