//! `containerd-shim-coffer-v2`: parse containerd's flags → run the action (`start`, `delete`, or
//! serve the Task API when started with `-socket`). Exit codes: 0 on success, 1 on failure (the
//! message goes to stderr, which containerd logs).
#![forbid(unsafe_code)]

mod bootstrap;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let flags = match containerd_shim::parse(&args) {
        Ok(flags) => flags,
        Err(err) => {
            eprintln!("containerd-shim-coffer-v2: {err}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        println!("containerd-shim-coffer-v2 {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("containerd-shim-coffer-v2: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bootstrap::run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("containerd-shim-coffer-v2: {err:#}");
            ExitCode::FAILURE
        }
    }
}
