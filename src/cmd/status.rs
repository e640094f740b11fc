//! `connected-registry status --tree`: this registry and every registry beneath it, as their
//! status reports flow up (state, how stale each report is, lag behind its parent's change
//! feed, the last error). With `serve` running on the data directory it asks it through
//! `DATA/admin.sock` (the same answer as `GET /acr/v1/_gateway/_tree`); with none, it reads the
//! reports the registry kept (`DATA/child-reports/`), which say nothing of this registry's own
//! state or its children's lag.

use std::path::PathBuf;
use std::process::ExitCode;

use oci::gateway::{ChildNode, StatusReport};

use super::access::Output;

#[derive(clap::Args)]
pub struct Args {
    /// Show every registry beneath this one (children, their children, ...), not only this one.
    #[arg(long)]
    tree: bool,

    /// Data directory of the registry (as `serve --data`).
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME", default_value = "./data")]
    data: PathBuf,

    /// `table`: text for people; `json`: the answer of `GET /acr/v1/_gateway/_tree`.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// With no registry running: a child whose kept report is older than this is shown
    /// `Offline` (the running registry uses its own `--child-offline-after`).
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    child_offline_after: std::time::Duration,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::check_data_dir(&args.data, super::MissingData::Refuse)?;
    let (mut report, live) = match super::admin_socket::tree(&args.data).await? {
        Some(value) => (
            serde_json::from_value::<StatusReport>(value).map_err(|e| {
                anyhow::anyhow!("the registry answered a tree this command cannot read: {e}")
            })?,
            true,
        ),
        None => {
            let reports =
                registry::child_reports::ChildReports::open(&args.data, args.child_offline_after);
            let report = StatusReport {
                children: reports.children(None, None),
                ..StatusReport::default()
            };
            (report, false)
        }
    };
    if !args.tree {
        report.children.clear();
    }
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", render(&report, live)),
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per registry, indented by depth.
fn render(top: &StatusReport, live: bool) -> String {
    let mut rows = vec![vec![
        "REGISTRY".to_owned(),
        "STATE".into(),
        "REPORTED".into(),
        "LAG".into(),
        "LAST SYNC".into(),
        "TAGS".into(),
        "ERROR".into(),
    ]];
    let name = if top.name.is_empty() {
        "(this registry)".to_owned()
    } else {
        top.name.clone()
    };
    if live {
        rows.push(vec![
            name,
            top.connection_state.to_string(),
            "now".into(),
            "-".into(),
            top.last_successful_sync
                .clone()
                .unwrap_or_else(|| "-".into()),
            top.tags_synced.to_string(),
            error_of(top),
        ]);
    } else {
        rows.push(vec![
            format!("{name} (not running: kept reports only)"),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    for child in &top.children {
        push_rows(&mut rows, child, 1);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn push_rows(rows: &mut Vec<Vec<String>>, node: &ChildNode, depth: usize) {
    let report = node.report.as_deref();
    rows.push(vec![
        format!("{}└ {}", "  ".repeat(depth - 1), node.name),
        node.state.to_string(),
        node.report_age_seconds
            .map_or_else(|| "never".into(), |s| format!("{s}s ago")),
        node.lag.map_or_else(|| "-".into(), |l| l.to_string()),
        report
            .and_then(|r| r.last_successful_sync.clone())
            .unwrap_or_else(|| "-".into()),
        report.map_or_else(|| "-".into(), |r| r.tags_synced.to_string()),
        report.map_or_else(|| "-".into(), error_of),
    ]);
    if let Some(report) = report {
        for child in &report.children {
            push_rows(rows, child, depth + 1);
        }
    }
}

/// The last error, shortened to a line.
fn error_of(report: &StatusReport) -> String {
    match &report.last_error {
        None => "-".into(),
        Some(e) => {
            let mut text: String = e.message.chars().take(80).collect();
            if e.message.chars().count() > 80 {
                text.push('…');
            }
            text
        }
    }
}
