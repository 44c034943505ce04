//! Which image names are sent to the engine.

use crate::error::EngineError;

/// The longest name sent.
const MAX_NAME_BYTES: usize = 512;

/// Checks that `name` is something the engine's image API takes as `{name}`: a reference
/// (`NAME[:TAG]`, `NAME@sha256:HEX`, with a registry host and port) or an image ID
/// (`sha256:HEX` or a prefix of the hex), made of `a-z A-Z 0-9 . _ - / : @`, not starting
/// with `-`, `/` or `.`, with no `..` and no empty path component. Nothing else reaches the
/// request line.
pub fn check_image_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && !name.starts_with(['-', '/', '.', ':', '@'])
        && !name.contains("..")
        && !name.contains("//")
        && !name.ends_with(['/', ':', '@']);
    if ok { Ok(()) } else { Err(EngineError::InvalidName(name.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_references_pass_and_nothing_else_does() {
        for good in ["app", "app:dev", "127.0.0.1:5000/team/app:1.4", "sha256:0123abcd", "0123abcd", "a@sha256:00ff"] {
            check_image_name(good).unwrap();
        }
        for bad in ["", "-app", "/app", "../app", "a/../b", "app:dev?x=1", "a b", "a//b", "app/", "a\nb", "%2e%2e"] {
            assert!(check_image_name(bad).is_err(), "{bad:?}");
        }
    }
}
