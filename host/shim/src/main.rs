//! `containerd-shim-coffer-v2`: parse containerd's flags → run the action (`start`, `delete`, or
//! serve the Task API when started with `-socket`). Exit codes: 0 on success, 1 on failure (the
//! message goes to stderr, which containerd logs).
#![forbid(unsafe_code)]

mod bootstrap;

use std::process::ExitCode;

/// What `-h`/`--help` prints: containerd starts the shim; people only look at it.
const HELP: &str = "\
containerd-shim-coffer-v2: the containerd runtime io.containerd.coffer.v2, one Coffer VM per pod

containerd starts this binary (with -namespace, -address, -id, -bundle and an action: start,
delete, or none to serve the Task API on -socket); it is not run by hand.

Options:
  -h, --help       print this help
  -v               print the version
  -info            print the runtime's information (protobuf) and exit

Environment:
  COFFER_RUNTIME_CONFIG  runtime configuration (default /etc/coffer/runtime.toml)
  COFFER_LOG             log level (RUST_LOG when unset), e.g. COFFER_LOG=debug

Examples:
  ctr run --runtime io.containerd.coffer.v2 docker.io/library/busybox:latest demo echo hi
  crictl runp --runtime coffer pod.json      (a containerd runtime handler named coffer)

See host/shim/README.md.
";

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "-help")
    {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let flags = match containerd_shim::parse(&args) {
        Ok(flags) => flags,
        Err(err) => {
            eprintln!("containerd-shim-coffer-v2: {err} (see -h)");
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
            let line = coffer_log::error_line(err.as_ref());
            tracing::error!("{line}");
            eprintln!("containerd-shim-coffer-v2: {line}");
            ExitCode::FAILURE
        }
    }
}
