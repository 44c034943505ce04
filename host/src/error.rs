//! The library's error type: the WIT `error` variant's classes, plus what can
//! go wrong around the guest (loading the component, a trap, a bad config).
//!
//! It depends on nothing else in the crate; the conversions to and from the
//! WIT's `error` are in [`crate::conversions`].

/// Everything `RootfsCache` can fail with. Each case is a class a caller can
/// act on; the message names the path or rule involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed (empty or relative path, size out of range,
    /// unknown converter or platform).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A path named by the request does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The source is neither an overlay2 layer nor an OCI layout, or is a
    /// broken one.
    #[error("unsupported source: {0}")]
    UnsupportedSource(String),
    /// The policy refused a capability call.
    #[error("denied by policy rule `{rule}`: {detail}")]
    Denied {
        /// The rule, e.g. `source_roots`.
        rule: String,
        /// What was refused.
        detail: String,
    },
    /// The converter failed.
    #[error("converter {converter} failed{}: {stderr_tail}", exit_status.map(|s| format!(" with exit status {s}")).unwrap_or_default())]
    ConverterFailed {
        /// Which converter.
        converter: String,
        /// Its exit status, if it was a process that exited.
        exit_status: Option<i32>,
        /// The tail of its standard error, or its error message.
        stderr_tail: String,
    },
    /// A time limit was exceeded.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Attaching or mounting the image failed.
    #[error("mount failed: {0}")]
    MountFailed(String),
    /// Installing the agent failed.
    #[error("installing the agent failed: {0}")]
    InjectFailed(String),
    /// A cache entry or image failed validation.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The cache's filesystem is full.
    #[error("no space left: {0}")]
    NoSpace(String),
    /// Another I/O error.
    #[error("I/O error: {0}")]
    Io(String),
    /// The guest trapped: it hit a resource limit or broke a host invariant.
    /// Whatever it held (mounts, locks, temporary images) has been released.
    #[error("the guest was stopped: {0}")]
    GuestTrap(String),
    /// The component could not be loaded or does not implement the world.
    #[error("component: {0}")]
    Component(String),
    /// The configuration or policy is invalid.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// A short name for the class, as used in `--json` output and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid-request",
            Self::NotFound(_) => "not-found",
            Self::UnsupportedSource(_) => "unsupported-source",
            Self::Denied { .. } => "denied",
            Self::ConverterFailed { .. } => "converter-failed",
            Self::Timeout(_) => "timeout",
            Self::MountFailed(_) => "mount-failed",
            Self::InjectFailed(_) => "inject-failed",
            Self::Corrupt(_) => "corrupt",
            Self::NoSpace(_) => "no-space",
            Self::Io(_) => "io",
            Self::GuestTrap(_) => "guest-trap",
            Self::Component(_) => "component",
            Self::Config(_) => "config",
        }
    }

    /// The process exit status the CLI uses for this class.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::InvalidRequest(_) | Self::Config(_) => 2,
            Self::NotFound(_) => 3,
            Self::UnsupportedSource(_) => 4,
            Self::Denied { .. } => 5,
            Self::ConverterFailed { .. } => 6,
            Self::Timeout(_) => 7,
            Self::MountFailed(_) | Self::InjectFailed(_) => 8,
            Self::Corrupt(_) => 9,
            Self::NoSpace(_) => 10,
            Self::Io(_) => 11,
            Self::GuestTrap(_) | Self::Component(_) => 12,
        }
    }

    /// A policy refusal.
    pub fn denied(rule: &str, detail: impl Into<String>) -> Self {
        Self::Denied { rule: rule.into(), detail: detail.into() }
    }

    /// Maps an I/O error on `what` to `NotFound`, `NoSpace` or `Io`.
    pub fn io(what: impl std::fmt::Display, err: &std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::NotFound => Self::NotFound(format!("{what}: {err}")),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                Self::NoSpace(format!("{what}: {err}"))
            }
            _ => Self::Io(format!("{what}: {err}")),
        }
    }
}

/// What a host function returns: an error for the guest, or a trap.
#[derive(Debug)]
pub enum HostCallError {
    /// Returned to the guest as the WIT `error`.
    Guest(Error),
    /// Ends the guest's call: a broken invariant or an exhausted limit.
    Trap(wasmtime::Error),
}

impl From<Error> for HostCallError {
    fn from(e: Error) -> Self {
        Self::Guest(e)
    }
}

impl From<wasmtime::Error> for HostCallError {
    fn from(e: wasmtime::Error) -> Self {
        Self::Trap(e)
    }
}

/// A `Result` for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
