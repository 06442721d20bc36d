//! `coffer sandbox gc`: removes what sandboxes whose supervisor died left in a state directory
//! (`coffer_runtime::gc`). `coffer sandbox run` does the same before it starts its own.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use coffer_runtime::config::RuntimeConfig;
use coffer_runtime::gc::{self, Report};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Runtime configuration (default /etc/coffer/runtime.toml when it exists, else the
    /// built-in defaults): where the state directory is.
    #[arg(long, env = "COFFER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Runtime state directory [config: state_dir].
    #[arg(long, env = "COFFER_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

/// Collects the stale sandboxes of the configured state directory and prints one line per
/// sandbox removed (stdout) and per sandbox left alone for want of an owner record (stderr).
/// Fails when a stale sandbox could not be removed.
pub async fn run(args: GcArgs) -> anyhow::Result<u8> {
    let state_dir = match args.state_dir {
        Some(dir) => dir,
        None => RuntimeConfig::load_or_default(args.config.as_deref())?.state_dir,
    };
    let report = gc::collect(&state_dir).await?;
    for collected in &report.collected {
        println!("removed {collected}");
    }
    for dir in &report.unowned {
        eprintln!(
            "coffer: left {} alone: it has no owner record (made by an older Coffer); remove it \
             once no VM uses it",
            dir.display()
        );
    }
    if report.failed.is_empty() {
        return Ok(0);
    }
    for (dir, err) in &report.failed {
        eprintln!("coffer: could not remove {}: {err}", dir.display());
    }
    bail!(
        "{} stale sandbox(es) in {} could not be removed",
        report.failed.len(),
        state_dir.display()
    )
}

/// What `coffer sandbox run` does before it starts: collects the stale sandboxes of
/// `state_dir`, logging what it removed; a failure is logged and does not stop the run.
pub async fn before_run(state_dir: &Path) {
    match gc::collect(state_dir).await {
        Ok(Report {
            collected, failed, ..
        }) => {
            for collected in collected {
                tracing::info!(%collected, "removed a stale sandbox");
            }
            for (dir, err) in failed {
                tracing::warn!(dir = %dir.display(), %err, "could not remove a stale sandbox");
            }
        }
        Err(err) => {
            tracing::warn!(state_dir = %state_dir.display(), %err, "looking for stale sandboxes");
        }
    }
}
