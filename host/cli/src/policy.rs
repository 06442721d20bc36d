//! `coffer policy`: evaluate a request against a policy exactly as the guest agent would.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use coffer_policies::initdata::{Entry, Initdata};
use coffer_policies::{Engine, Limits, PolicyInput, Request, SandboxState};

/// Exit code of `policy eval` when the policy denies the request.
pub const EXIT_DENIED: u8 = 1;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decide one request: prints `allow` or `deny: <reason>` (exit 0 or 1).
    Eval(EvalArgs),
    /// Write initdata whose confidential policy admits exactly the given pod.
    Gen(crate::policy_gen::GenArgs),
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Rego policy (package coffer.policy).
    #[arg(
        long,
        conflicts_with = "initdata",
        required_unless_present = "initdata"
    )]
    policy: Option<PathBuf>,
    /// Policy data (JSON) for --policy.
    #[arg(long, requires = "policy")]
    data: Option<PathBuf>,
    /// Take policy and policy data from an initdata document instead, as the guest does.
    #[arg(long)]
    initdata: Option<PathBuf>,
    /// The request kind (the RPC name, e.g. CreateContainer).
    #[arg(long)]
    request: String,
    /// The request's fields (JSON object, input schema version 1, without `kind`).
    #[arg(long)]
    input: PathBuf,
    /// Sandbox state (JSON, `{"containers": [...]}`); default: no containers.
    #[arg(long)]
    state: Option<PathBuf>,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

pub async fn run(command: PolicyCommand) -> anyhow::Result<u8> {
    match command {
        PolicyCommand::Eval(args) => eval(args),
        PolicyCommand::Gen(args) => crate::policy_gen::generate(args).await,
    }
}

fn eval(args: EvalArgs) -> anyhow::Result<u8> {
    let (source, data, name) = match (&args.policy, &args.initdata) {
        (Some(policy), None) => {
            let data = args
                .data
                .as_ref()
                .map(|d| read(d, "policy data"))
                .transpose()?;
            (read(policy, "policy")?, data, policy.display().to_string())
        }
        (None, Some(path)) => {
            let raw = std::fs::read(path)
                .with_context(|| format!("reading initdata {}", path.display()))?;
            let initdata =
                Initdata::parse(raw).with_context(|| format!("initdata {}", path.display()))?;
            let Some(policy) = initdata.get(Entry::Policy) else {
                bail!("initdata {} has no policy.rego entry", path.display());
            };
            let data = initdata.get(Entry::PolicyData).map(str::to_owned);
            (
                policy.to_owned(),
                data,
                format!("{} ({})", path.display(), initdata.digest()),
            )
        }
        _ => bail!("give exactly one of --policy and --initdata"),
    };
    let engine = Engine::new(&source, data.as_deref(), Limits::default())
        .with_context(|| format!("loading policy {name}"))?;

    let mut fields: serde_json::Value = serde_json::from_str(&read(&args.input, "input")?)
        .with_context(|| format!("input {} is not JSON", args.input.display()))?;
    let Some(object) = fields.as_object_mut() else {
        bail!("input {} must be a JSON object", args.input.display());
    };
    if object.contains_key("kind") {
        bail!(
            "input {} must not contain `kind`; pass it with --request",
            args.input.display()
        );
    }
    object.insert("kind".into(), args.request.clone().into());
    let request: Request = serde_json::from_value(fields).with_context(|| {
        format!(
            "input {} is not a valid {} request of input schema version {} (kinds: {})",
            args.input.display(),
            args.request,
            coffer_policies::INPUT_VERSION,
            Request::NAMES.join(", ")
        )
    })?;
    let state: SandboxState = match &args.state {
        Some(path) => serde_json::from_str(&read(path, "state")?)
            .with_context(|| format!("state {} is not a valid sandbox state", path.display()))?,
        None => SandboxState::default(),
    };
    let decision = engine.decide(&PolicyInput::new(request, state));
    if decision.allowed {
        println!("allow");
        for (key, value) in &decision.record {
            println!("record {key}={value}");
        }
        Ok(0)
    } else {
        println!("deny: {}", decision.reason);
        Ok(EXIT_DENIED)
    }
}
