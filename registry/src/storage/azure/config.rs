//! Which container of which storage account: `--storage azblob://CONTAINER` and the standard
//! `AZURE_STORAGE_CONNECTION_STRING` (`AccountName=...;AccountKey=...;` with `EndpointSuffix` or
//! `BlobEndpoint`, or `UseDevelopmentStorage=true`), so Azurite and real Azure both work. The
//! key never leaves this file but to sign requests: `Debug`, `describe` and every error show
//! the account, the endpoint and the container only.

use std::fmt;

use base64::Engine;

/// The blob endpoint of Azurite's well-known development account.
const DEVELOPMENT_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";
/// Azurite's well-known development account and its published key (`UseDevelopmentStorage=true`).
const DEVELOPMENT_ACCOUNT: &str = "devstoreaccount1";
const DEVELOPMENT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A container and the account that holds it.
#[derive(Clone)]
pub struct AzureConfig {
    container: String,
    account: String,
    /// The account's blob service URL, e.g. `https://ACCOUNT.blob.core.windows.net`.
    endpoint: String,
    /// How requests prove the right to the account. Never shown.
    credentials: Credentials,
}

/// How requests are authorized: the account key (Shared Key signing) or a shared access
/// signature (appended to every URL).
#[derive(Clone)]
pub(crate) enum Credentials {
    /// The account key, decoded from its base64.
    SharedKey(Vec<u8>),
    /// The query string of the SAS, without its leading `?`.
    Sas(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credentials::SharedKey(_) => "SharedKey(<redacted>)",
            Credentials::Sas(_) => "Sas(<redacted>)",
        })
    }
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureConfig")
            .field("container", &self.container)
            .field("account", &self.account)
            .field("endpoint", &self.endpoint)
            .field("connection_string", &"<redacted>")
            .finish()
    }
}

/// The fields of a connection string the store reads (the others are accepted and ignored).
#[derive(Default)]
struct Fields<'a> {
    account_name: Option<&'a str>,
    account_key: Option<&'a str>,
    sas: Option<&'a str>,
    endpoint_suffix: Option<&'a str>,
    protocol: Option<&'a str>,
    blob_endpoint: Option<&'a str>,
    development: bool,
}

impl<'a> Fields<'a> {
    /// Reads the fields `check_fields` accepted.
    fn read(connection_string: &'a str) -> Fields<'a> {
        let mut fields = Fields::default();
        for (key, value) in connection_string
            .split(';')
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
        {
            match key {
                "AccountName" => fields.account_name = Some(value),
                "AccountKey" => fields.account_key = Some(value),
                "SharedAccessSignature" => fields.sas = Some(value.trim_start_matches('?')),
                "EndpointSuffix" => fields.endpoint_suffix = Some(value),
                "DefaultEndpointsProtocol" => fields.protocol = Some(value),
                "BlobEndpoint" => fields.blob_endpoint = Some(value),
                "UseDevelopmentStorage" => fields.development = value.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        fields
    }
}

impl AzureConfig {
    /// Checks `container` and `connection_string`; the error names the part that is wrong
    /// (never a value of the connection string, which holds the key).
    pub fn new(container: &str, connection_string: &str) -> Result<AzureConfig, String> {
        check_container(container)?;
        let keys = check_fields(connection_string)?;
        let parsed = Fields::read(connection_string);
        let development = parsed.development;
        let account = match (parsed.account_name, development) {
            (Some(account), _) => check_account(account)?,
            (None, true) => DEVELOPMENT_ACCOUNT.to_owned(),
            (None, false) => {
                return Err(
                    "AZURE_STORAGE_CONNECTION_STRING has no AccountName: add AccountName=NAME"
                        .into(),
                )
            }
        };
        let credentials = match (parsed.account_key, parsed.sas, development) {
            (Some(key), _, _) => Credentials::SharedKey(
                base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .map_err(|_| {
                        format!(
                            "AZURE_STORAGE_CONNECTION_STRING's AccountKey for account {account} is not base64: copy the key whole, as the Azure portal shows it"
                        )
                    })?,
            ),
            (None, Some(sas), _) => Credentials::Sas(sas.to_owned()),
            (None, None, true) => Credentials::SharedKey(
                base64::engine::general_purpose::STANDARD
                    .decode(DEVELOPMENT_KEY)
                    .expect("Azurite's published key is base64"),
            ),
            (None, None, false) => {
                return Err(format!(
                    "AZURE_STORAGE_CONNECTION_STRING has no AccountKey for account {account} (fields given: {}): add AccountKey=KEY (or SharedAccessSignature=SAS)",
                    keys.join(", ")
                ));
            }
        };
        let endpoint = match (parsed.blob_endpoint, development) {
            (Some(endpoint), _) => endpoint.trim_end_matches('/').to_owned(),
            (None, true) => DEVELOPMENT_ENDPOINT.to_owned(),
            (None, false) => {
                let protocol = match parsed.protocol {
                    Some(p) if p.eq_ignore_ascii_case("http") => "http",
                    _ => "https",
                };
                let suffix = parsed.endpoint_suffix.unwrap_or("core.windows.net");
                format!("{protocol}://{account}.blob.{suffix}")
            }
        };
        let usable = reqwest::Url::parse(&endpoint)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.query().is_none());
        if !usable {
            return Err(format!(
                "AZURE_STORAGE_CONNECTION_STRING's blob endpoint {endpoint:?} is not a URL: use e.g. BlobEndpoint=https://{account}.blob.core.windows.net"
            ));
        }
        Ok(AzureConfig {
            container: container.to_owned(),
            account,
            endpoint,
            credentials,
        })
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    pub(crate) fn account(&self) -> &str {
        &self.account
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The choice as `print-config` and logs show it: no key.
    pub fn describe(&self) -> String {
        format!(
            "azblob://{} (account {}, endpoint {})",
            self.container, self.account, self.endpoint
        )
    }
}

/// Azure's rules for a container name: 3 to 63 lowercase letters, digits and single hyphens,
/// starting and ending with a letter or digit.
fn check_container(name: &str) -> Result<(), String> {
    let fine = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if fine {
        Ok(())
    } else {
        Err(format!(
            "azblob://{name}: {name:?} is not an Azure container name: use 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit"
        ))
    }
}

/// An account name goes into every URL and signed header: Azure's are 3 to 24 lowercase letters
/// and digits; emulators' may differ, so any ASCII letters and digits are taken.
fn check_account(name: &str) -> Result<String, String> {
    if (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "AZURE_STORAGE_CONNECTION_STRING's AccountName {:?} is not a storage account name: use the account's name as the Azure portal shows it (letters and digits)",
            name.escape_debug().to_string()
        ))
    }
}

/// The field names of a connection string, each checked to be `KEY=VALUE`: an error names the
/// position and key of a bad one, never a value.
fn check_fields(connection_string: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (n, field) in connection_string
        .split(';')
        .filter(|f| !f.trim().is_empty())
        .enumerate()
    {
        match field.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() && !value.trim().is_empty() => {
                keys.push(key.trim().to_owned())
            }
            Some((key, _)) if !key.trim().is_empty() => {
                return Err(format!(
                    "AZURE_STORAGE_CONNECTION_STRING: field {} ({}) has no value",
                    n + 1,
                    key.trim()
                ))
            }
            _ => {
                return Err(format!(
                    "AZURE_STORAGE_CONNECTION_STRING: field {} is not KEY=VALUE",
                    n + 1
                ))
            }
        }
    }
    const KNOWN: [&str; 15] = [
        "AccountName",
        "AccountKey",
        "SharedAccessSignature",
        "EndpointSuffix",
        "DefaultEndpointsProtocol",
        "UseDevelopmentStorage",
        "DevelopmentStorageProxyUri",
        "BlobEndpoint",
        "BlobSecondaryEndpoint",
        "TableEndpoint",
        "TableSecondaryEndpoint",
        "QueueEndpoint",
        "QueueSecondaryEndpoint",
        "FileEndpoint",
        "FileSecondaryEndpoint",
    ];
    if let Some(unknown) = keys.iter().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "AZURE_STORAGE_CONNECTION_STRING: unknown field {unknown} (known: {})",
            KNOWN.join(", ")
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_connection_string_and_errors_hide_the_key() {
        let key = "c2VjcmV0LWtleS1ieXRlcw==";
        let real = AzureConfig::new(
            "images",
            &format!("DefaultEndpointsProtocol=https;AccountName=plant;AccountKey={key};EndpointSuffix=core.windows.net"),
        )
        .unwrap();
        assert_eq!(real.endpoint, "https://plant.blob.core.windows.net");
        let dev = AzureConfig::new("images", "UseDevelopmentStorage=true").unwrap();
        assert_eq!(dev.endpoint, DEVELOPMENT_ENDPOINT);
        assert_eq!(dev.account, DEVELOPMENT_ACCOUNT);
        assert!(matches!(dev.credentials, Credentials::SharedKey(ref k) if k.len() == 64));
        let sas = AzureConfig::new(
            "images",
            "AccountName=plant;SharedAccessSignature=?sv=2022-11-02&sig=c2VjcmV0",
        )
        .unwrap();
        assert!(
            matches!(sas.credentials, Credentials::Sas(ref q) if q == "sv=2022-11-02&sig=c2VjcmV0")
        );
        assert!(!format!("{sas:?}").contains("c2VjcmV0"));
        for bad in [
            format!("AccountName=plant;AccountKey={key};Bogus={key}"),
            format!("AccountName=plant;AccountKey={key};BlobEndpoint="),
            format!("AccountName=plant;{key}"),
            "AccountName=plant".to_owned(),
            "AccountName=plant;AccountKey=not*base64".to_owned(),
            // Would be a bad header: refused before any request is signed.
            format!("AccountName=pl\nant;AccountKey={key}"),
            format!("AccountName=plant.evil;AccountKey={key}"),
        ] {
            let err = AzureConfig::new("images", &bad).unwrap_err();
            assert!(!err.contains(key), "{err}");
            assert!(err.contains("AZURE_STORAGE_CONNECTION_STRING"), "{err}");
        }
        assert!(format!("{real:?}").contains("<redacted>"));
        assert!(!format!("{real:?}").contains(key));
    }
}
