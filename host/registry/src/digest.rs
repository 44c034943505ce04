//! Content digests: `sha256:<64 lowercase hex>`, the only algorithm the store keeps.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A SHA-256 content digest, as registries and OCI descriptors write it (`sha256:<hex>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a string is not a digest this crate accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The algorithm is not `sha256`.
    #[error("digest {0:?}: only sha256 digests are supported")]
    Algorithm(String),
    /// The hexadecimal part is not 64 lowercase hex digits.
    #[error("digest {0:?}: expected sha256: followed by 64 lowercase hexadecimal digits")]
    Malformed(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(bytes).into())
    }

    /// A digest from a finished SHA-256 state.
    pub fn from_sha256(raw: [u8; 32]) -> Self {
        use std::fmt::Write as _;
        let mut hex = String::with_capacity(64);
        for byte in raw {
            let _ = write!(hex, "{byte:02x}");
        }
        Self { hex }
    }

    /// The 64 hexadecimal digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, DigestError> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(DigestError::Malformed(text.to_owned()));
        };
        if algorithm != "sha256" {
            if algorithm.is_empty() || hex.is_empty() {
                return Err(DigestError::Malformed(text.to_owned()));
            }
            return Err(DigestError::Algorithm(text.to_owned()));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::Malformed(text.to_owned()));
        }
        Ok(Self { hex: hex.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn refuses_malformed() {
        assert!(matches!("md5:abcd".parse::<Digest>(), Err(DigestError::Algorithm(_))));
        assert!(matches!("sha256:ABCD".parse::<Digest>(), Err(DigestError::Malformed(_))));
        assert!(matches!("sha256".parse::<Digest>(), Err(DigestError::Malformed(_))));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(upper.parse::<Digest>().is_err());
    }
}
