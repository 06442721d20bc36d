//! `coffer`: parse → tracing → run one subcommand. Exit codes: a container's own exit status for
//! `sandbox run`; 125 when Coffer itself fails; 130 when interrupted.

mod attestation;
mod examples;
mod forge;
mod gc;
mod image;
mod kbs;
mod measure;
mod oci_image;
mod pod_schema;
mod policy;
mod policy_gen;
mod progress;
mod report;
mod run;
mod sealed_volumes;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Exit code for failures of Coffer itself (not of the container's command).
pub const EXIT_COFFER_FAILED: u8 = 125;
/// Exit code after Ctrl-C / SIGTERM.
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(name = "coffer", version, about = "Coffer: confidential VM sandboxes", after_help = examples::COFFER)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sandboxes: one VM each.
    #[command(subcommand, after_help = examples::SANDBOX)]
    Sandbox(SandboxCommand),
    /// The guest image (kernel + initramfs with coffer-agent).
    #[command(subcommand, after_help = examples::IMAGE)]
    Image(ImageCommand),
    /// TEE evidence (SEV-SNP reports, TDX quotes).
    #[command(subcommand, after_help = examples::ATTESTATION)]
    Attestation(attestation::AttestationCommand),
    /// Agent policies: evaluate requests as the guest would.
    #[command(subcommand, after_help = examples::POLICY)]
    Policy(policy::PolicyCommand),
    /// Key broker client (KBS protocol 0.4.0).
    #[command(subcommand, after_help = examples::KBS)]
    Kbs(kbs::KbsCommand),
    /// Expected launch measurements (SEV-SNP launch digest, TDX MRTD) of guest images.
    #[command(subcommand, after_help = examples::MEASURE)]
    Measure(measure::MeasureCommand),
}

#[derive(Debug, Subcommand)]
enum SandboxCommand {
    /// Boot a sandbox, run CMD in a container made from a rootfs directory, tear down.
    #[command(after_help = crate::examples::SANDBOX_RUN)]
    Run(Box<run::RunArgs>),
    /// Remove what sandboxes whose supervisor died (killed `sandbox run`, crashed shim) left in
    /// the state directory: their directories, sockets and logs, processes still running for
    /// them, pod network filters. Sandboxes whose supervisor runs are never touched. Prints each
    /// sandbox removed. `sandbox run` does this before it starts.
    #[command(after_help = crate::examples::SANDBOX_GC)]
    Gc(gc::GcArgs),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the guest image reproducibly and print the sha256 of each artifact.
    #[command(after_help = crate::examples::IMAGE_BUILD)]
    Build(image::BuildArgs),
    /// Pull a container image: verify, decrypt and unpack it into a directory.
    #[command(after_help = crate::examples::IMAGE_PULL)]
    Pull(oci_image::PullArgs),
    /// Show a container image's manifest, layers, encryption and run configuration.
    #[command(after_help = crate::examples::IMAGE_INSPECT)]
    Inspect(oci_image::InspectArgs),
    /// Encrypt a container image's layers (OCI layout or registry) for JWE recipients and/or a
    /// broker-held key.
    #[command(after_help = crate::examples::IMAGE_ENCRYPT)]
    Encrypt(oci_image::EncryptArgs),
    /// Sign an image in a registry with a cosign key (verified by `sigstoreSigned` policies).
    #[command(after_help = crate::examples::IMAGE_SIGN)]
    Sign(oci_image::SignArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let levels = match coffer_log::filter("warn") {
        Ok(levels) => levels,
        Err(err) => {
            eprintln!("coffer: {}", report::one_line(&err.into()));
            return ExitCode::from(EXIT_COFFER_FAILED);
        }
    };
    // Dependencies' DEBUG/TRACE output is never let through (`coffer_image::logging`).
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(coffer_log::ansi_on_stderr())
                .with_filter(levels.and(filter_fn(coffer_image::logging::may_log))),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("coffer: starting the async runtime: {err}");
            return ExitCode::from(EXIT_COFFER_FAILED);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Sandbox(SandboxCommand::Run(args)) => run::run(*args).await,
            Command::Sandbox(SandboxCommand::Gc(args)) => gc::run(args).await,
            Command::Image(ImageCommand::Build(args)) => image::build(args).map(|()| 0),
            Command::Image(ImageCommand::Pull(args)) => oci_image::pull_command(args).await,
            Command::Image(ImageCommand::Inspect(args)) => oci_image::inspect_command(args).await,
            Command::Image(ImageCommand::Encrypt(args)) => oci_image::encrypt_command(args).await,
            Command::Image(ImageCommand::Sign(args)) => oci_image::sign_command(args).await,
            Command::Attestation(command) => attestation::run(command),
            Command::Policy(command) => policy::run(command).await,
            Command::Kbs(command) => kbs::run(command).await,
            Command::Measure(command) => measure::run(command),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("coffer: {}", report::one_line(&err));
            ExitCode::from(EXIT_COFFER_FAILED)
        }
    }
}
