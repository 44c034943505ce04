//! Converter names, as requests, policies and the CLI spell them: parsed
//! here once, into a [`ConverterSpec`] every other part of the host uses.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// A converter, as requests and the CLI name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConverterSpec {
    /// The `oci2rootfs` crate, in-process.
    Oci2rootfs,
    /// The exact converter (the default).
    #[default]
    Exact,
    /// An external command with oci2rootfs's command-line contract.
    Command(PathBuf),
}

impl FromStr for ConverterSpec {
    type Err = Error;

    /// `oci2rootfs`, `exact` or `command:<absolute path>`.
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "oci2rootfs" => Ok(Self::Oci2rootfs),
            "exact" => Ok(Self::Exact),
            _ => match text.strip_prefix("command:") {
                Some(path) if Path::new(path).is_absolute() => Ok(Self::Command(PathBuf::from(path))),
                Some(path) => Err(Error::InvalidRequest(format!("converter command {path:?} is not an absolute path"))),
                None => Err(Error::InvalidRequest(format!(
                    "converter {text:?} is unknown; use oci2rootfs, exact or command:<absolute path>"
                ))),
            },
        }
    }
}

impl fmt::Display for ConverterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oci2rootfs => f.write_str("oci2rootfs"),
            Self::Exact => f.write_str("exact"),
            Self::Command(path) => write!(f, "command:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_once_and_prints_back() {
        for text in ["exact", "oci2rootfs", "command:/usr/bin/conv"] {
            let spec: ConverterSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("command:/x".parse::<ConverterSpec>().unwrap(), ConverterSpec::Command("/x".into()));
        assert_eq!(ConverterSpec::default(), ConverterSpec::Exact);
    }

    #[test]
    fn an_unknown_name_or_a_relative_command_is_an_invalid_request() {
        let unknown = "magic".parse::<ConverterSpec>().unwrap_err();
        assert_eq!(
            unknown,
            Error::InvalidRequest(
                "converter \"magic\" is unknown; use oci2rootfs, exact or command:<absolute path>".into()
            )
        );
        let relative = "command:bin/conv".parse::<ConverterSpec>().unwrap_err();
        assert_eq!(relative.class(), "invalid-request");
        assert!(relative.to_string().contains("not an absolute path"), "{relative}");
    }
}
