//! Names of tokens and scope maps: what `az acr` accepts, so a name moves between the two.

/// Longest name.
pub const MAX_NAME_LEN: usize = 50;

/// Refuses a name that is not 1 to 50 letters, digits, `-` and `_`; `what` names the thing.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} is not valid: use 1 to {MAX_NAME_LEN} letters, digits, '-' and '_'"
        ))
    }
}
