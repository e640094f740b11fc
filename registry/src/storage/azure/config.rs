//! Which container of which storage account: `--storage azblob://CONTAINER` and the standard
//! `AZURE_STORAGE_CONNECTION_STRING` (`AccountName=...;AccountKey=...;` with `EndpointSuffix` or
//! `BlobEndpoint`, or `UseDevelopmentStorage=true`), so Azurite and real Azure both work. The
//! key never leaves this file but to sign requests: `Debug`, `describe` and every error show
//! the account, the endpoint and the container only.

use std::fmt;

use azure_storage::{CloudLocation, ConnectionString, StorageCredentials};

/// The blob endpoint of Azurite's well-known development account.
const DEVELOPMENT_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// A container and the account that holds it.
#[derive(Clone)]
pub struct AzureConfig {
    container: String,
    account: String,
    /// The account's blob service URL, e.g. `https://ACCOUNT.blob.core.windows.net`.
    endpoint: String,
    /// The connection string, kept whole: the credentials are made from it when the store
    /// opens. Never shown.
    connection_string: String,
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

impl AzureConfig {
    /// Checks `container` and `connection_string`; the error names the part that is wrong
    /// (never a value of the connection string, which holds the key).
    pub fn new(container: &str, connection_string: &str) -> Result<AzureConfig, String> {
        check_container(container)?;
        let fields = check_fields(connection_string)?;
        let parsed = ConnectionString::new(connection_string).map_err(|_| {
            "AZURE_STORAGE_CONNECTION_STRING could not be read: use KEY=VALUE pairs separated by ';'".to_owned()
        })?;
        let development = parsed.use_development_storage == Some(true);
        let account = match (parsed.account_name, development) {
            (Some(account), _) => account.to_owned(),
            (None, true) => azure_storage::EMULATOR_ACCOUNT.to_owned(),
            (None, false) => {
                return Err(
                    "AZURE_STORAGE_CONNECTION_STRING has no AccountName: add AccountName=NAME"
                        .into(),
                )
            }
        };
        if parsed.account_key.is_none() && parsed.sas.is_none() && !development {
            return Err(format!(
                "AZURE_STORAGE_CONNECTION_STRING has no AccountKey for account {account} (fields given: {}): add AccountKey=KEY (or SharedAccessSignature=SAS)",
                fields.join(", ")
            ));
        }
        let endpoint = match (parsed.blob_endpoint, development) {
            (Some(endpoint), _) => endpoint.trim_end_matches('/').to_owned(),
            (None, true) => DEVELOPMENT_ENDPOINT.to_owned(),
            (None, false) => {
                let protocol = match parsed.default_endpoints_protocol {
                    Some(azure_storage::EndpointProtocol::Http) => "http",
                    _ => "https",
                };
                let suffix = parsed.endpoint_suffix.unwrap_or("core.windows.net");
                format!("{protocol}://{account}.blob.{suffix}")
            }
        };
        if azure_core::Url::parse(&endpoint).is_err() {
            return Err(format!(
                "AZURE_STORAGE_CONNECTION_STRING's blob endpoint {endpoint:?} is not a URL: use e.g. BlobEndpoint=https://{account}.blob.core.windows.net"
            ));
        }
        Ok(AzureConfig {
            container: container.to_owned(),
            account,
            endpoint,
            connection_string: connection_string.to_owned(),
        })
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// The choice as `print-config` and logs show it: no key.
    pub fn describe(&self) -> String {
        format!(
            "azblob://{} (account {}, endpoint {})",
            self.container, self.account, self.endpoint
        )
    }

    /// The location and credentials the SDK's clients are made with.
    pub(crate) fn client_parts(&self) -> Result<(CloudLocation, StorageCredentials), String> {
        let parsed = ConnectionString::new(&self.connection_string)
            .map_err(|_| "AZURE_STORAGE_CONNECTION_STRING could not be read".to_owned())?;
        let credentials = if parsed.use_development_storage == Some(true)
            && parsed.account_key.is_none()
            && parsed.sas.is_none()
        {
            StorageCredentials::access_key(
                azure_storage::EMULATOR_ACCOUNT,
                azure_core::auth::Secret::new(azure_storage::EMULATOR_ACCOUNT_KEY),
            )
        } else {
            parsed.storage_credentials().map_err(|_| {
                format!(
                    "AZURE_STORAGE_CONNECTION_STRING gives no usable credentials for account {}",
                    self.account
                )
            })?
        };
        let location = CloudLocation::Custom {
            account: self.account.clone(),
            uri: self.endpoint.clone(),
        };
        Ok((location, credentials))
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
        assert!(dev.client_parts().is_ok());
        for bad in [
            format!("AccountName=plant;AccountKey={key};Bogus={key}"),
            format!("AccountName=plant;AccountKey={key};BlobEndpoint="),
            format!("AccountName=plant;{key}"),
            "AccountName=plant".to_owned(),
        ] {
            let err = AzureConfig::new("images", &bad).unwrap_err();
            assert!(!err.contains(key), "{err}");
            assert!(err.contains("AZURE_STORAGE_CONNECTION_STRING"), "{err}");
        }
        assert!(format!("{real:?}").contains("<redacted>"));
        assert!(!format!("{real:?}").contains(key));
    }
}
