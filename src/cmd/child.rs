//! `connected-registry child create|list|show|update|delete` and `child credential generate`:
//! child registries defined at their parent, as `az acr connected-registry` defines them. A
//! child's settings are checked here with the parser the child itself uses (`sync::settings`),
//! so a definition the child would refuse is refused now. Like `token`, each command goes to
//! the registry serving the data directory (its admin socket), or to its store when none runs.
//! `create` and `credential generate` print the child's connection string: the one value its
//! deployment needs (shown once: it holds the sync token's password).

use std::process::ExitCode;
use std::time::Duration;

use access::child::{ChildChange, ChildMode, ChildSettings};
use access::{Command, RepoPattern};
use serde_json::Value;

use super::access::{On, Output};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ChildCommand,
    #[command(flatten)]
    on: On,
}

/// The settings a child receives from this registry (`create` needs repositories; `update`
/// replaces what it is given).
#[derive(clap::Args, Clone, Default)]
struct SettingsFlags {
    /// Repositories the child syncs: a name, a prefix (team-a/*) or *; repeatable. The sync
    /// token may read these (and write them, ReadWrite) and nothing else.
    #[arg(long = "repository", value_name = "PATTERN", num_args = 1.., action = clap::ArgAction::Append)]
    repositories: Vec<String>,
    /// Cron schedule of the child's sync windows (five fields).
    #[arg(long)]
    sync_schedule: Option<String>,
    /// Length of each sync window (PT1H to P7D, or 1h..7d).
    #[arg(long)]
    sync_window: Option<String>,
    /// How long the child keeps its change log for its own children (P1D to P90D).
    #[arg(long)]
    message_ttl: Option<String>,
    /// Platforms the child keeps of multi-arch images (OS/ARCH[/VARIANT]); repeatable.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    platforms: Vec<String>,
    /// Bandwidth the child may use for sync (e.g. 10Mbps). Recorded and handed to the child.
    #[arg(long, value_name = "RATE")]
    bandwidth_limit: Option<String>,
}

#[derive(clap::Subcommand)]
enum ChildCommand {
    /// Define a child registry and make its sync token; prints its connection string.
    Create {
        name: String,
        /// ReadOnly (pull down only) or ReadWrite (also push up). A ReadOnly registry may
        /// only have ReadOnly children.
        #[arg(long, default_value = "ReadOnly")]
        mode: ChildMode,
        #[command(flatten)]
        settings: SettingsFlags,
        /// How the child reaches this registry, HOST or HOST:PORT (it goes into the connection
        /// string as ParentGatewayEndpoint).
        #[arg(
            long,
            env = "CONNECTED_REGISTRY_PARENT_ENDPOINT",
            value_name = "HOST[:PORT]"
        )]
        parent_endpoint: Option<String>,
        /// https, or http for tests on loopback.
        #[arg(long, default_value = "https", value_parser = ["https", "http"])]
        protocol: String,
    },
    /// Change a child's settings: it applies them at its next sync pass.
    Update {
        name: String,
        #[arg(long)]
        mode: Option<ChildMode>,
        #[command(flatten)]
        settings: SettingsFlags,
    },
    /// Show one child (never its password).
    Show { name: String },
    /// List the children.
    List,
    /// Delete a child: its sync token stops working at once.
    Delete { name: String },
    /// The child's sync credentials.
    #[command(subcommand)]
    Credential(CredentialCommand),
}

#[derive(clap::Subcommand)]
enum CredentialCommand {
    /// A new connection string; the old one keeps working for --overlap, then is refused.
    Generate {
        name: String,
        /// How long the old connection string still works (time to redeploy the child).
        #[arg(long, default_value = "1h", value_parser = super::parse_duration)]
        overlap: Duration,
    },
}

/// Repository patterns, each checked.
fn patterns(words: &[String]) -> anyhow::Result<Vec<RepoPattern>> {
    words
        .iter()
        .map(|w| {
            w.parse()
                .map_err(|e: String| anyhow::anyhow!("--repository: {e}"))
        })
        .collect()
}

/// Refuses settings the child's own parser would refuse, naming the setting.
fn check(mode: ChildMode, flags: &SettingsFlags) -> anyhow::Result<()> {
    let raw = sync::settings::RawSettings {
        parent: Some("https://parent.invalid".into()),
        mode: Some(mode.to_string()),
        sync_schedule: flags.sync_schedule.clone(),
        sync_window: flags.sync_window.clone(),
        message_ttl: flags.message_ttl.clone(),
        platforms: flags.platforms.clone(),
        ..Default::default()
    };
    raw.validate()?;
    if flags.bandwidth_limit.as_deref().is_some_and(str::is_empty) {
        anyhow::bail!("--bandwidth-limit is empty: give a rate such as 10Mbps, or leave it out");
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let command = match args.command {
        ChildCommand::Create {
            name,
            mode,
            settings,
            parent_endpoint,
            protocol,
        } => {
            check(mode, &settings)?;
            let Some(parent_endpoint) = parent_endpoint else {
                anyhow::bail!("child {name}: its connection string must say how it reaches this registry: give --parent-endpoint HOST[:PORT] (or CONNECTED_REGISTRY_PARENT_ENDPOINT)");
            };
            if settings.repositories.is_empty() {
                anyhow::bail!(
                    "child {name} needs at least one --repository PATTERN (a name, team-a/* or *)"
                );
            }
            Command::ChildCreate {
                name,
                settings: ChildSettings {
                    mode,
                    repositories: patterns(&settings.repositories)?,
                    sync_schedule: settings.sync_schedule,
                    sync_window: settings.sync_window,
                    message_ttl: settings.message_ttl,
                    platforms: settings.platforms,
                    bandwidth_limit: settings.bandwidth_limit,
                },
                parent_endpoint,
                protocol,
            }
        }
        ChildCommand::Update {
            name,
            mode,
            settings,
        } => {
            check(mode.unwrap_or_default(), &settings)?;
            Command::ChildUpdate {
                name,
                change: ChildChange {
                    mode,
                    repositories: (!settings.repositories.is_empty())
                        .then(|| patterns(&settings.repositories))
                        .transpose()?,
                    sync_schedule: settings.sync_schedule,
                    sync_window: settings.sync_window,
                    message_ttl: settings.message_ttl,
                    platforms: (!settings.platforms.is_empty()).then_some(settings.platforms),
                    bandwidth_limit: settings.bandwidth_limit,
                },
            }
        }
        ChildCommand::Show { name } => Command::ChildShow { name },
        ChildCommand::List => Command::ChildList,
        ChildCommand::Delete { name } => Command::ChildDelete { name },
        ChildCommand::Credential(CredentialCommand::Generate { name, overlap }) => {
            Command::ChildCredentialGenerate {
                name,
                overlap: overlap.as_secs(),
            }
        }
    };
    let deleted = match &command {
        Command::ChildDelete { name } => Some(name.clone()),
        _ => None,
    };
    let answer = super::admin_socket::send(&args.on.data, &args.on.metadata()?, command).await?;
    let text = match (args.on.output, deleted) {
        (Output::Json, _) => serde_json::to_string_pretty(&answer)?,
        (Output::Table, Some(name)) => {
            format!("child registry {name} deleted; its sync token stops working at once")
        }
        (Output::Table, None) if answer.is_array() => render_list(&answer),
        (Output::Table, None) => render_one(&answer),
    };
    println!("{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(s).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn render_one(child: &Value) -> String {
    let mut out = super::access::fields(&[
        ("name", s(&child["name"])),
        ("mode", s(&child["mode"])),
        ("repositories", s(&child["repositories"])),
        ("sync schedule", s(&child["syncSchedule"])),
        ("sync window", s(&child["syncWindow"])),
        ("message ttl", s(&child["messageTtl"])),
        ("platforms", s(&child["platforms"])),
        ("bandwidth limit", s(&child["bandwidthLimit"])),
        ("sync token", s(&child["syncTokenName"])),
        ("parent endpoint", s(&child["parentGatewayEndpoint"])),
        ("created", s(&child["creationDate"])),
    ]);
    if let Some(cs) = child["connectionString"].as_str() {
        if let Some(expiry) = child["previousPasswordExpiry"].as_str() {
            out.push_str(&format!(
                "the previous connection string works until {expiry}\n"
            ));
        }
        out.push_str(&format!(
            "\nconnection string (ACR_REGISTRY_CONNECTION_STRING of the child; shown only now, keep it safe):\n{cs}\n"
        ));
    }
    out
}

fn render_list(children: &Value) -> String {
    let items = children.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "no child registries: `child create NAME --repository PATTERN --parent-endpoint HOST` makes one".into();
    }
    super::access::table(
        &["NAME", "MODE", "REPOSITORIES", "SYNC TOKEN", "CREATED"],
        items
            .iter()
            .map(|c| {
                vec![
                    s(&c["name"]),
                    s(&c["mode"]),
                    s(&c["repositories"]),
                    s(&c["syncTokenName"]),
                    s(&c["creationDate"]),
                ]
            })
            .collect(),
    )
}
