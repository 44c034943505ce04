//! The audit log: one JSON line per capability call, allowed or refused, and
//! one per request refused or failed without a capability call saying so.
//!
//! ```json
//! {"time":"2026-11-27T10:00:00.123Z","request":3,"capability":"run-converter",
//!  "arguments":{"converter":"exact","output":"tmp/…"},"verdict":"allowed","duration_us":81234}
//! {"time":"2026-11-27T10:00:01.456Z","request":4,"capability":"convert",
//!  "arguments":{"source":"/srv/x","agent":"/opt/a","converter":"exact","size":null,"platform":null},
//!  "verdict":"denied","duration_us":12,"rule":"source_roots","error":"denied by policy rule …"}
//! ```
//!
//! `capability` is the host call, or for a line about a whole request the
//! cache operation (`open`, `convert`, `inspect`, `list`, `sweep`, `gc`,
//! `verify`). `verdict` is `allowed` (the call ran and succeeded), `failed`
//! (it ran and returned an error), `denied` (the policy refused it: `rule`
//! names the rule), `invalid` (it was malformed and refused before anything
//! ran) or `trapped` (it hit a limit and ended the guest's call). `error`
//! holds the error of every verdict but `allowed`, when there is one.
//!
//! A request refused before its guest runs (a source outside the policy's
//! roots, an agent or converter that does not parse, a cache directory the
//! policy does not serve), and a request whose guest failed it without a
//! host call that already logged the same error (a request the guest found
//! invalid, a broken source, a guest stopped by a limit), gets one line for
//! the operation. A request is never refused without a line.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// An append-only JSON-lines file.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ran and succeeded.
    Allowed,
    /// Ran and failed.
    Failed,
    /// Refused by the policy.
    Denied,
    /// Refused as malformed before anything ran.
    Invalid,
    /// Hit a limit; the guest was stopped.
    Trapped,
}

impl Verdict {
    /// The verdict for a call or request that ended with `result`.
    pub fn of<T>(result: &Result<T>) -> Self {
        match result {
            Ok(_) => Self::Allowed,
            Err(Error::Denied { .. }) => Self::Denied,
            Err(Error::InvalidRequest(_)) => Self::Invalid,
            Err(Error::GuestTrap(_)) => Self::Trapped,
            Err(_) => Self::Failed,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Failed => "failed",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
            Self::Trapped => "trapped",
        }
    }
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl AuditLog {
    /// Opens `path` for appending, creating it (mode 0600) when missing.
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::Config(format!("audit log {}: {e}", path.display())))?;
        Ok(Self { file: Mutex::new(file) })
    }

    /// Appends one record; a `Denied` error adds its `rule`. A failed write
    /// is logged, not fatal: the audit log must not take the cache down with
    /// it.
    pub fn record(
        &self,
        request: u64,
        capability: &str,
        arguments: &serde_json::Value,
        verdict: Verdict,
        error: Option<&Error>,
        duration: Duration,
    ) {
        let mut line = serde_json::json!({
            "time": rfc3339(SystemTime::now()),
            "request": request,
            "capability": capability,
            "arguments": arguments,
            "verdict": verdict.as_str(),
            "duration_us": u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        });
        if let Some(error) = error {
            if let Error::Denied { rule, .. } = error {
                line["rule"] = serde_json::Value::String(rule.clone());
            }
            line["error"] = serde_json::Value::String(error.to_string());
        }
        let mut text = line.to_string();
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(text.as_bytes()) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_000_000_123)), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }
}
