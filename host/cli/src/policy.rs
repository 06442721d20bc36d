//! `coffer policy`: evaluate a request against a policy exactly as the guest agent would.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use coffer_initdata::{Entry, Initdata};
use coffer_policies::{
    Engine, KATA_REQUESTS, KataEngine, Limits, PolicyInput, Request, SandboxState, kata_request,
};

/// Exit code of `policy eval` when the policy denies the request.
pub const EXIT_DENIED: u8 = 1;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decide one request: prints `allow` or `deny: <reason>` (exit 0 or 1); `--kata` for Kata
    /// genpolicy policies.
    #[command(after_help = crate::examples::POLICY_EVAL)]
    Eval(EvalArgs),
    /// Write initdata whose confidential policy admits exactly the given pod.
    #[command(after_help = crate::examples::POLICY_GEN)]
    Gen(crate::policy_gen::GenArgs),
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Kata compatibility mode: the policy is Kata genpolicy output (package agent_policy, with
    /// policy_data embedded or in --data), --request a Kata request (CreateContainer or
    /// CreateContainerRequest, ReadStdout, …) and --input Kata's request JSON.
    #[arg(long)]
    kata: bool,
    /// Rego policy (package coffer.policy; with --kata, package agent_policy).
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
    /// The request kind (the RPC name, e.g. CreateContainer; with --kata also the request
    /// message name, e.g. CreateContainerRequest).
    #[arg(long)]
    request: String,
    /// The request's fields (JSON object, input schema version 1, without `kind`; with --kata,
    /// the whole request as Kata's agent serializes it).
    #[arg(long)]
    input: PathBuf,
    /// Sandbox state (JSON, `{"containers": [...]}`); default: no containers. With --kata: the
    /// policy state `data.pstate` to start from (JSON object); default `{}`.
    #[arg(long)]
    state: Option<PathBuf>,
    /// With --kata: show what the policy printed (Rego `print`) on stderr.
    #[arg(long, requires = "kata")]
    prints: bool,
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

/// The policy source, its data and a name for messages, from --policy/--data or --initdata.
fn policy_source(args: &EvalArgs) -> anyhow::Result<(String, Option<String>, String)> {
    Ok(match (&args.policy, &args.initdata) {
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
    })
}

fn eval(args: EvalArgs) -> anyhow::Result<u8> {
    let (source, data, name) = policy_source(&args)?;
    if args.kata {
        return eval_kata(&args, &source, data.as_deref(), &name);
    }
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

/// `--kata`: decides with [`KataEngine`]; prints `allow: <rule> is true` and the state
/// operations applied (`op …`, then the new `state …`), or `deny: <reason>`.
fn eval_kata(args: &EvalArgs, source: &str, data: Option<&str>, name: &str) -> anyhow::Result<u8> {
    let Some(message) = kata_request(&args.request) else {
        let names: Vec<&str> = KATA_REQUESTS.iter().map(|&(rpc, _)| rpc).collect();
        bail!(
            "{} is not a Kata agent request (an RPC name or its request message, e.g. \
             CreateContainer or CreateContainerRequest; RPCs: {})",
            args.request,
            names.join(", ")
        );
    };
    let mut engine = KataEngine::new(source, data, Limits::default())
        .with_context(|| format!("loading Kata policy {name}"))?;
    if let Some(path) = &args.state {
        let state: serde_json::Value = serde_json::from_str(&read(path, "state")?)
            .with_context(|| format!("state {} is not JSON", path.display()))?;
        engine = engine
            .with_state(state)
            .with_context(|| format!("state {}", path.display()))?;
    }
    let input = read(&args.input, "input")?;
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&input).with_context(
        || {
            format!(
                "input {} is not a JSON object (Kata's {message} as JSON)",
                args.input.display()
            )
        },
    )?;
    let decision = engine.decide(message, &input);
    if args.prints {
        for line in &decision.prints {
            eprintln!("print: {line}");
        }
    }
    if decision.allowed {
        println!("allow: {}", decision.reason);
        for op in &decision.ops {
            println!("op {op}");
        }
        if !decision.ops.is_empty() {
            println!("state {}", engine.state());
        }
        Ok(0)
    } else {
        println!("deny: {}", decision.reason);
        Ok(EXIT_DENIED)
    }
}
