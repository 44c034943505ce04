//! The guard every host call goes through: it starts measuring, traps a
//! guest that passes more than the payload limit, and at the end logs the
//! call (tracing and the audit log) with its verdict.

use std::time::Instant;

use crate::audit::Verdict;
use crate::error::{Error, HostCallError};
use crate::observer::Phase;
use crate::store::StoreState;

/// What a host function returns: a value, an error for the guest, or a trap.
pub(super) type HostResult<T> = Result<T, HostCallError>;

/// One capability call in progress.
pub(super) struct Call {
    capability: &'static str,
    arguments: serde_json::Value,
    started: Instant,
}

impl StoreState {
    /// Starts `capability` with `arguments` (for the logs). A guest passing
    /// more than the payload limit in any of `payload` (the lengths of what
    /// it passed) is broken or hostile: the call traps, and is logged so.
    pub(super) fn begin(
        &mut self,
        capability: &'static str,
        arguments: serde_json::Value,
        payload: &[usize],
    ) -> HostResult<Call> {
        let call = Call { capability, arguments, started: Instant::now() };
        let limit = self.shared.policy.limits.max_payload_bytes;
        if let Some(size) = payload.iter().copied().find(|&s| s > limit) {
            let trap = wasmtime::Error::msg(format!("{capability} was passed {size} bytes; the limit is {limit}"));
            self.audit(&call, Verdict::Trapped, None);
            return Err(HostCallError::Trap(trap));
        }
        Ok(call)
    }

    /// A guest holding more mounts and locks than allowed is leaking them.
    pub(super) fn check_resources(&mut self, call: &Call) -> HostResult<()> {
        let limit = self.shared.policy.limits.max_resources;
        if self.resources >= limit {
            let trap =
                wasmtime::Error::msg(format!("{}: the guest already holds {limit} mounts and locks", call.capability));
            self.audit(call, Verdict::Trapped, None);
            return Err(HostCallError::Trap(trap));
        }
        Ok(())
    }

    fn audit(&mut self, call: &Call, verdict: Verdict, error: Option<&Error>) {
        let duration = call.started.elapsed();
        match verdict {
            Verdict::Denied => {
                tracing::info!(request = self.request_id, capability = call.capability, arguments = %call.arguments, error = ?error.map(ToString::to_string), "denied")
            }
            Verdict::Trapped => {
                tracing::warn!(request = self.request_id, capability = call.capability, "guest stopped")
            }
            _ => {
                tracing::debug!(request = self.request_id, capability = call.capability, arguments = %call.arguments, ?verdict, ?duration, error = ?error.map(ToString::to_string))
            }
        }
        if let Some(audit) = &self.shared.audit {
            audit.record(self.request_id, call.capability, &call.arguments, verdict, error, duration);
            match (verdict, error) {
                (Verdict::Trapped, _) => self.audited.push(Error::GuestTrap(String::new())),
                (_, Some(error)) => self.audited.push(error.clone()),
                _ => {}
            }
        }
    }

    /// Ends `call` with `result`: its time counts as host time, and it is
    /// logged with the verdict the result gives.
    pub(super) fn finish<T>(&mut self, call: Call, result: Result<T, Error>) -> HostResult<T> {
        self.host_time += call.started.elapsed();
        self.audit(&call, Verdict::of(&result), result.as_ref().err());
        result.map_err(HostCallError::Guest)
    }

    /// Ends a call that succeeded as a whole but refused part of what it was
    /// asked (a probed path outside the roots): it is logged as `denied`,
    /// with the first refusal.
    pub(super) fn finish_refused<T>(&mut self, call: Call, result: Result<T, Error>, refusal: &Error) -> HostResult<T> {
        self.host_time += call.started.elapsed();
        self.audit(&call, Verdict::Denied, Some(refusal));
        result.map_err(HostCallError::Guest)
    }

    /// Tells the observer a phase started.
    pub(super) fn phase(&self, phase: Phase) {
        if let Some(observer) = &self.shared.observer {
            observer.phase_started(phase);
        }
    }
}
