//! `connected-registry manifest`: check IoT Edge deployment manifests against the production
//! checklist (`check`), and fill `${VAR}` placeholders in deployment templates (`render`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use deploy_manifests::{check, parse_env_file, render, CheckSettings, Severity};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Check deployment manifests (or `${VAR}` templates). Exit status: 0 clean, 1 warnings only, 2 errors.
    Check(CheckArgs),
    /// Fill `${VAR}` placeholders in a deployment template from an env file; fails on any unfilled one.
    Render(RenderArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Manifest files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// `text` for people, `json` for CI.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Module-twin size limit for the `$edgeAgent` desired properties, in bytes (IoT Hub: 32768).
    #[arg(long, default_value_t = CheckSettings::default().twin_size_limit)]
    twin_size_limit: usize,
}

#[derive(clap::Args)]
struct RenderArgs {
    /// The deployment template holding `${VAR}` placeholders.
    template: PathBuf,
    /// `.env`-style file of `NAME=value` lines.
    #[arg(long = "env")]
    env_file: PathBuf,
    /// Where to write the manifest (default: standard output).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check(a) => run_check(a),
        Command::Render(a) => run_render(a),
    }
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let settings = CheckSettings {
        twin_size_limit: args.twin_size_limit,
        ..CheckSettings::default()
    };
    let mut worst = 0u8;
    let mut json_files = Vec::new();
    for file in &args.files {
        let bytes = std::fs::read(file)
            .with_context(|| format!("cannot read manifest {}", file.display()))?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("manifest {} is not UTF-8 text", file.display()))?;
        let report = check(&text, &settings);
        worst = worst.max(report.exit_code());
        match args.format {
            Format::Text => print!("{}", report.to_text(&file.display().to_string())),
            Format::Json => {
                let mut v = serde_json::to_value(&report).context("internal: serialize report")?;
                v["file"] = file.display().to_string().into();
                v["errors"] = report.count(Severity::Error).into();
                v["warnings"] = report.count(Severity::Warning).into();
                v["infos"] = report.count(Severity::Info).into();
                json_files.push(v);
            }
        }
    }
    if args.format == Format::Json {
        let out = serde_json::json!({ "files": json_files, "exitCode": worst });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("internal: serialize report")?
        );
    }
    Ok(ExitCode::from(worst))
}

fn run_render(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let template = std::fs::read_to_string(&args.template)
        .with_context(|| format!("cannot read template {}", args.template.display()))?;
    let env_text = std::fs::read_to_string(&args.env_file)
        .with_context(|| format!("cannot read env file {}", args.env_file.display()))?;
    let vars = parse_env_file(&env_text)
        .with_context(|| format!("env file {}", args.env_file.display()))?;
    let mut out = render(&template, &vars)
        .with_context(|| format!("template {}", args.template.display()))?;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    match args.output {
        Some(path) => std::fs::write(&path, out)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{out}"),
    }
    Ok(ExitCode::SUCCESS)
}
