//! The effective-configuration table `--print-config` prints (`proxy` and `serve`): one setting
//! a line, its value, and where it came from or a note, aligned so an operator reading a
//! deployment's variables can scan it. Secrets never get here: callers pass them through
//! [`redacted`] or leave them out.

use std::fmt::{self, Display};

/// Column width of setting names.
const KEY_WIDTH: usize = 27;
/// Column width of values followed by a note.
const VALUE_WIDTH: usize = 44;

/// What stands in for a secret's value.
pub const REDACTED: &str = "<redacted>";

/// The table being written.
#[derive(Default)]
pub struct ConfigTable {
    out: String,
}

impl ConfigTable {
    pub fn new() -> ConfigTable {
        ConfigTable::default()
    }

    /// One setting: `key`, its `value`, and `note` (where it came from; empty for none).
    pub fn line(&mut self, key: &str, value: impl Display, note: impl Display) -> &mut Self {
        let (value, note) = (value.to_string(), note.to_string());
        if note.is_empty() {
            self.out.push_str(&format!("{key:<KEY_WIDTH$} {value}\n"));
        } else {
            self.out.push_str(&format!(
                "{key:<KEY_WIDTH$} {value:<VALUE_WIDTH$} # {note}\n"
            ));
        }
        self
    }

    /// A comment line (`# text`), e.g. what a setting would do.
    pub fn comment(&mut self, text: impl Display) -> &mut Self {
        self.out.push_str(&format!("# {text}\n"));
        self
    }

    pub fn render(&self) -> &str {
        &self.out
    }
}

impl Display for ConfigTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.out)
    }
}

/// `text` with the value of every `KEY=VALUE` pair (separated by `;`) whose key names a secret
/// (`SharedAccessKey`, `...Password`, `...Secret`, `...Token` but not `...TokenName`) replaced
/// by [`REDACTED`]: connection strings as ACR and IoT Hub write them.
pub fn redacted(text: &str) -> String {
    text.split(';')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn is_secret_key(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    ["sharedaccesskey", "password", "secret", "signature"]
        .iter()
        .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_align_and_secrets_are_redacted() {
        let mut t = ConfigTable::new();
        t.line("listen", "127.0.0.1:8080", "flag")
            .line("data", "./data", "");
        assert_eq!(
            t.render(),
            format!(
                "{:<27} {:<44} # flag\n{:<27} ./data\n",
                "listen", "127.0.0.1:8080", "data"
            )
        );
        let cs = "ConnectedRegistryName=e1;SyncTokenName=e1-sync;SyncTokenPassword=s3cr=t!;\
                  ParentGatewayEndpoint=x.azurecr.io";
        let shown = redacted(cs);
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("SyncTokenName=e1-sync"), "{shown}");
        assert!(shown.contains("SyncTokenPassword=<redacted>"), "{shown}");
        let hub = redacted("HostName=h;DeviceId=d;SharedAccessKey=abc==");
        assert_eq!(hub, "HostName=h;DeviceId=d;SharedAccessKey=<redacted>");
    }
}
