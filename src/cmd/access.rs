//! `connected-registry scope-map ...`, `token ...` and `signing-key rotate`: who may do what,
//! managed as `az acr scope-map` and `az acr token` manage it on ACR, with the same names and,
//! with `--output json`, the same JSON. Each command becomes an [`access::Command`] and goes to
//! the registry serving the data directory (its admin socket), or to the store itself when no
//! registry runs there; a change takes effect at once. With `--metadata postgres://...` the
//! token set is the one replicas share there, changed directly (each replica serves the change
//! within its `--access-refresh`).
//!
//! Also `serve --access-config FILE`: scope maps and tokens seeded from a file at start.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use access::token::{Slot, Status};
use access::Command;
use anyhow::Context;
use serde_json::Value;

/// The flags every management command takes.
#[derive(clap::Args)]
pub struct On {
    /// Data directory of the registry whose tokens are managed (as `serve --data`).
    #[arg(
        long,
        env = "ACR_REGISTRY_DATA_VOLUME",
        default_value = "./data",
        global = true
    )]
    pub data: PathBuf,

    /// Where the registry's metadata lives, as `serve --metadata`: `redb` (the token set is
    /// DATA/access.redb) or postgres://USER:PASSWORD@HOST:PORT/DATABASE, where replicas sharing
    /// the metadata keep one token set: the command changes it there directly, and every
    /// replica serves the change within its --access-refresh. The password is never shown.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_METADATA",
        default_value = registry::storage::MetadataBackend::DEFAULT,
        value_name = "redb|postgres://...",
        hide_env_values = true,
        global = true
    )]
    pub metadata: String,

    /// `table`: text for people; `json`: the JSON `az acr` prints for the same command.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

impl On {
    /// The metadata `--metadata` names.
    pub fn metadata(&self) -> anyhow::Result<registry::storage::MetadataBackend> {
        self.metadata
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--metadata: {e}"))
    }
}

/// How results are printed (`--output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct ScopeMapArgs {
    #[command(subcommand)]
    command: ScopeMapCommand,
    #[command(flatten)]
    on: On,
}

#[derive(clap::Subcommand)]
enum ScopeMapCommand {
    /// Make a scope map: repositories and what may be done there.
    Create {
        name: String,
        #[command(flatten)]
        repository: RuleFlags<REPOSITORY>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Add or take away actions, or change the description.
    Update {
        name: String,
        #[command(flatten)]
        add_repository: RuleFlags<ADD_REPOSITORY>,
        #[command(flatten)]
        remove_repository: RuleFlags<REMOVE_REPOSITORY>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Show one scope map.
    Show { name: String },
    /// List the scope maps (the built-in `_repositories_*` ones too).
    List,
    /// Delete a scope map no token uses.
    Delete { name: String },
}

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    on: On,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Make a token with two passwords (shown once), on a scope map or on rules of its own.
    Create {
        name: String,
        /// An existing scope map.
        #[arg(long)]
        scope_map: Option<String>,
        /// Rules of a scope map made for this token (`NAME-scope-map`), instead of --scope-map.
        #[command(flatten)]
        repository: RuleFlags<REPOSITORY>,
        /// enabled or disabled.
        #[arg(long)]
        status: Option<Status>,
        /// Make no passwords now (`token credential generate` makes them later).
        #[arg(long)]
        no_passwords: bool,
        /// The passwords expire after this long (`P30D`, `30d`, `12h`); default: never.
        #[arg(long, value_parser = expiration)]
        expiration: Option<Duration>,
        /// A client token of child registry CHILD (`child create`): handed down to it (as
        /// password hashes) at its next sync and valid there, not here.
        #[arg(long, value_name = "CHILD")]
        for_child: Option<String>,
    },
    /// Change a token's scope map or status (enabled, disabled).
    Update {
        name: String,
        #[arg(long)]
        scope_map: Option<String>,
        #[arg(long)]
        status: Option<Status>,
    },
    /// Show one token (never its passwords).
    Show { name: String },
    /// List the tokens.
    List,
    /// Delete a token: its passwords stop working at once.
    Delete { name: String },
    /// A token's passwords.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Read a password on stdin and print its argon2id hash, for `serve --access-config`.
    HashPassword,
}

#[derive(clap::Subcommand)]
enum CredentialCommand {
    /// Make a new password in one slot or both (shown once); the old one stops working.
    Generate {
        name: String,
        #[arg(long)]
        password1: bool,
        #[arg(long)]
        password2: bool,
        /// The new passwords expire after this long (`P30D`, `30d`); default: never.
        #[arg(long, value_parser = expiration)]
        expiration: Option<Duration>,
    },
    /// Delete one password: it stops working at once.
    Delete {
        name: String,
        #[arg(
            long,
            required_unless_present = "password2",
            conflicts_with = "password2"
        )]
        password1: bool,
        #[arg(long)]
        password2: bool,
    },
}

#[derive(clap::Args)]
pub struct SigningKeyArgs {
    #[command(subcommand)]
    command: SigningKeyCommand,
    #[command(flatten)]
    on: On,
}

#[derive(clap::Subcommand)]
enum SigningKeyCommand {
    /// Sign new access tokens with a new key; the old key verifies what it signed until that
    /// expires.
    Rotate,
}

/// The flag of `serve` that seeds scope maps and tokens.
#[derive(clap::Args)]
pub struct AccessConfigFlags {
    /// Scope maps and tokens to create or update at start (TOML, or JSON if the name ends in
    /// .json): `[[scopeMap]]` and `[[token]]` entries, passwords as argon2id hashes
    /// (`token hash-password` makes one). What the file does not name is left alone.
    #[arg(long, env = "ACR_REGISTRY_ACCESS_CONFIG", value_name = "FILE")]
    pub access_config: Option<PathBuf>,
}

/// `--expiration`: a duration of at least a second.
fn expiration(text: &str) -> Result<Duration, String> {
    let duration = super::parse_duration(text)?;
    if duration.as_secs() == 0 {
        return Err(
            "an expiration must be at least 1s: leave it out for passwords that never expire"
                .into(),
        );
    }
    Ok(duration)
}

/// The flags that take `REPO ACTION [ACTION...]`: their long name and help.
const RULE_FLAGS: [(&str, &str); 3] = [
    (
        "repository",
        "A repository (team-a/app), a prefix (team-a/*) or *, then one or more actions (content/read, content/write, content/delete, metadata/read, metadata/write); repeatable",
    ),
    (
        "add-repository",
        "Actions to add on a repository pattern: REPO ACTION [ACTION...]; repeatable",
    ),
    (
        "remove-repository",
        "Actions to take away from a repository pattern: REPO ACTION [ACTION...]; repeatable",
    ),
];
const REPOSITORY: usize = 0;
const ADD_REPOSITORY: usize = 1;
const REMOVE_REPOSITORY: usize = 2;

/// The words of each occurrence of the flag `RULE_FLAGS[FLAG]`, kept apart: clap's derive
/// flattens repeated multi-value flags into one list, which would lose where a rule ends (an
/// action is also a valid repository name).
#[derive(Clone, Debug, Default)]
struct RuleFlags<const FLAG: usize> {
    occurrences: Vec<Vec<String>>,
}

impl<const FLAG: usize> clap::FromArgMatches for RuleFlags<FLAG> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let occurrences = matches
            .try_get_occurrences::<String>(RULE_FLAGS[FLAG].0)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, e))?
            .map(|o| o.map(|words| words.cloned().collect()).collect())
            .unwrap_or_default();
        Ok(RuleFlags { occurrences })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<const FLAG: usize> clap::Args for RuleFlags<FLAG> {
    fn augment_args(command: clap::Command) -> clap::Command {
        let (name, help) = RULE_FLAGS[FLAG];
        command.arg(
            clap::Arg::new(name)
                .long(name)
                .help(help)
                .value_names(["REPO", "ACTION"])
                .num_args(2..)
                .action(clap::ArgAction::Append),
        )
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// Each `--repository REPO ACTION...` as a rule.
fn rules<const FLAG: usize>(flags: RuleFlags<FLAG>) -> anyhow::Result<Vec<access::Rule>> {
    flags
        .occurrences
        .iter()
        .map(|words| access::scope_map::parse_rule(words).map_err(anyhow::Error::msg))
        .collect()
}

pub async fn run_scope_map(args: ScopeMapArgs) -> anyhow::Result<ExitCode> {
    let command = match args.command {
        ScopeMapCommand::Create {
            name,
            repository,
            description,
        } => Command::ScopeMapCreate {
            name,
            description,
            rules: rules(repository)?,
        },
        ScopeMapCommand::Update {
            name,
            add_repository,
            remove_repository,
            description,
        } => Command::ScopeMapUpdate {
            name,
            description,
            add: rules(add_repository)?,
            remove: rules(remove_repository)?,
        },
        ScopeMapCommand::Show { name } => Command::ScopeMapShow { name },
        ScopeMapCommand::List => Command::ScopeMapList,
        ScopeMapCommand::Delete { name } => Command::ScopeMapDelete { name },
    };
    execute(&args.on, command).await
}

pub async fn run_token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let command = match args.command {
        TokenCommand::Create {
            name,
            scope_map,
            repository,
            status,
            no_passwords,
            expiration,
            for_child,
        } => Command::TokenCreate {
            name,
            scope_map,
            rules: rules(repository)?,
            status,
            no_passwords,
            expiration: expiration.map(|d| d.as_secs()),
            for_child,
        },
        TokenCommand::Update {
            name,
            scope_map,
            status,
        } => Command::TokenUpdate {
            name,
            scope_map,
            status,
        },
        TokenCommand::Show { name } => Command::TokenShow { name },
        TokenCommand::List => Command::TokenList,
        TokenCommand::Delete { name } => Command::TokenDelete { name },
        TokenCommand::Credential(CredentialCommand::Generate {
            name,
            password1,
            password2,
            expiration,
        }) => Command::CredentialGenerate {
            name,
            slots: [(password1, Slot::Password1), (password2, Slot::Password2)]
                .into_iter()
                .filter_map(|(asked, slot)| asked.then_some(slot))
                .collect(),
            expiration: expiration.map(|d| d.as_secs()),
        },
        TokenCommand::Credential(CredentialCommand::Delete {
            name, password2, ..
        }) => Command::CredentialDelete {
            name,
            slot: if password2 {
                Slot::Password2
            } else {
                Slot::Password1
            },
        },
        TokenCommand::HashPassword => return hash_password(),
    };
    execute(&args.on, command).await
}

pub async fn run_signing_key(args: SigningKeyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SigningKeyCommand::Rotate => execute(&args.on, Command::SigningKeyRotate).await,
    }
}

/// Sends `command` and prints the answer as `--output` says.
async fn execute(on: &On, command: Command) -> anyhow::Result<ExitCode> {
    let shape = Shape::of(&command);
    let answer = super::admin_socket::send(&on.data, &on.metadata()?, command).await?;
    let text = match on.output {
        Output::Json => serde_json::to_string_pretty(&answer)?,
        Output::Table => shape.render(&answer).trim_end().to_owned(),
    };
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `token hash-password`: the password from stdin (one line), its PHC hash on stdout.
fn hash_password() -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("password (it is shown as typed; end with Enter):");
    }
    let mut text = String::new();
    stdin
        .lock()
        .take(4096)
        .read_to_string(&mut text)
        .context("cannot read the password from stdin")?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        anyhow::bail!("no password on stdin: pipe one in, e.g. `printf %s \"$PW\" | connected-registry token hash-password`");
    }
    println!("{}", access::password::hash(password));
    Ok(ExitCode::SUCCESS)
}

/// Applies `--access-config` to the registry's token set at start (a no-op without it). Blocks
/// (reads the file, writes the store): call it off the async threads.
pub fn seed(authority: &access::Authority, flags: &AccessConfigFlags) -> anyhow::Result<()> {
    let Some(path) = &flags.access_config else {
        return Ok(());
    };
    let seed = access::Seed::load(path)?;
    let done = authority.seed(&seed)?;
    tracing::info!(
        file = %path.display(),
        scope_maps_created = done.scope_maps_created,
        scope_maps_updated = done.scope_maps_updated,
        tokens_created = done.tokens_created,
        tokens_updated = done.tokens_updated,
        "access config applied"
    );
    Ok(())
}

/// How an answer is shown as text: by the command it answers.
enum Shape {
    ScopeMap,
    ScopeMaps,
    Token,
    Tokens,
    /// `token create`: the token and its new passwords.
    NewToken,
    /// `token credential generate`: the new passwords.
    NewPasswords,
    /// What was deleted, and its name.
    Deleted(&'static str, String),
    SigningKey,
    /// Child registry commands, which print their own answers (`child`): JSON as it is.
    Json,
}

impl Shape {
    fn of(command: &Command) -> Shape {
        match command {
            Command::ScopeMapCreate { .. }
            | Command::ScopeMapUpdate { .. }
            | Command::ScopeMapShow { .. } => Shape::ScopeMap,
            Command::ScopeMapList => Shape::ScopeMaps,
            Command::ScopeMapDelete { name } => Shape::Deleted("scope map", name.clone()),
            Command::TokenCreate { .. } => Shape::NewToken,
            Command::TokenUpdate { .. }
            | Command::TokenShow { .. }
            | Command::CredentialDelete { .. } => Shape::Token,
            Command::TokenList => Shape::Tokens,
            Command::TokenDelete { name } => Shape::Deleted("token", name.clone()),
            Command::CredentialGenerate { .. } => Shape::NewPasswords,
            Command::SigningKeyRotate => Shape::SigningKey,
            Command::ChildCreate { .. }
            | Command::ChildUpdate { .. }
            | Command::ChildShow { .. }
            | Command::ChildList
            | Command::ChildDelete { .. }
            | Command::ChildCredentialGenerate { .. } => Shape::Json,
        }
    }

    fn render(&self, answer: &Value) -> String {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let items = || answer.as_array().cloned().unwrap_or_default();
        match self {
            Shape::ScopeMap => {
                let mut out = fields(&[
                    ("name", s(&answer["name"])),
                    ("type", s(&answer["type"])),
                    ("description", s(&answer["description"])),
                    ("created", s(&answer["creationDate"])),
                ]);
                out.push_str("actions:");
                for action in answer["actions"].as_array().into_iter().flatten() {
                    out.push_str(&format!("\n  {}", s(action)));
                }
                out
            }
            Shape::ScopeMaps => table(
                &["NAME", "TYPE", "CREATED", "DESCRIPTION"],
                items()
                    .iter()
                    .map(|m| {
                        ["name", "type", "creationDate", "description"]
                            .map(|k| s(&m[k]))
                            .to_vec()
                    })
                    .collect(),
            ),
            Shape::Token => token_fields(answer),
            Shape::Tokens if items().is_empty() => {
                "no tokens: `token create NAME --repository REPO ACTION...` makes one".into()
            }
            Shape::Tokens => table(
                &["NAME", "STATUS", "SCOPE MAP", "PASSWORDS", "CREATED"],
                items()
                    .iter()
                    .map(|t| {
                        vec![
                            s(&t["name"]),
                            s(&t["status"]),
                            s(&t["scopeMapId"]),
                            passwords_summary(&t["credentials"]["passwords"]),
                            s(&t["creationDate"]),
                        ]
                    })
                    .collect(),
            ),
            Shape::NewToken => {
                let mut out = token_fields(answer);
                out.push_str(&new_passwords(
                    &s(&answer["name"]),
                    &answer["credentials"]["passwords"],
                ));
                out
            }
            Shape::NewPasswords => {
                new_passwords(&s(&answer["username"]), &answer["passwords"])
                    .trim_start()
                    .to_owned()
            }
            Shape::Deleted(what, name) => format!("{what} {name} deleted"),
            Shape::Json => serde_json::to_string_pretty(answer).unwrap_or_default(),
            Shape::SigningKey => format!(
                "new signing key {} (created {}); the previous key still verifies the tokens it signed until they expire",
                s(&answer["kid"]),
                s(&answer["created"])
            ),
        }
    }
}

fn token_fields(token: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    fields(&[
        ("name", s(&token["name"])),
        ("status", s(&token["status"])),
        ("scope map", s(&token["scopeMapId"])),
        (
            "passwords",
            passwords_summary(&token["credentials"]["passwords"]),
        ),
        ("created", s(&token["creationDate"])),
    ])
}

/// `password1 (expires 2026-...), password2`, or `none`.
fn passwords_summary(passwords: &Value) -> String {
    let shown: Vec<String> = passwords
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p["name"].as_str().unwrap_or_default();
            match p["expiry"].as_str() {
                Some(expiry) => format!("{name} (expires {expiry})"),
                None => name.to_owned(),
            }
        })
        .collect();
    if shown.is_empty() {
        "none".into()
    } else {
        shown.join(", ")
    }
}

/// The new passwords' values and the warning that they are shown only now.
fn new_passwords(token: &str, passwords: &Value) -> String {
    let list = passwords.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "\nno passwords yet: make them with `token credential generate NAME --password1 --password2`".into();
    }
    let mut out = String::from("\n");
    for p in &list {
        out.push_str(&format!(
            "{}: {}\n",
            p["name"].as_str().unwrap_or_default(),
            p["value"].as_str().unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "These passwords are shown only now: keep them safe (log in as user {token}). They cannot be shown again; `token credential generate` makes new ones."
    ));
    out
}

/// `name: value` lines, the values aligned.
pub(super) fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:width$} {v}\n", format!("{k}:")))
        .collect()
}

/// A plain table: a header row and columns padded to their widest cell.
pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}
