//! Progress reports for blob downloads, so a CLI can draw one bar per blob.

use crate::digest::Digest;

/// Receives what happens to each blob of a fetch. Every method has an empty default; calls
/// for different blobs may come from different threads, interleaved.
pub trait Progress: Send + Sync {
    /// A download of `digest` starts (`size` when the caller or the registry gave it). Not
    /// called for a blob already in the store.
    fn started(&self, digest: &Digest, size: Option<u64>) {
        let _ = (digest, size);
    }

    /// `received` bytes of `digest` have arrived so far in the current attempt.
    fn advanced(&self, digest: &Digest, received: u64) {
        let _ = (digest, received);
    }

    /// The attempt failed (`reason`: a digest or length mismatch, a truncated stream) and the
    /// download starts again from zero.
    fn retrying(&self, digest: &Digest, reason: &str) {
        let _ = (digest, reason);
    }

    /// The blob is in the store: `downloaded` bytes came over the network (0 if it was present).
    fn finished(&self, digest: &Digest, downloaded: u64) {
        let _ = (digest, downloaded);
    }
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A closure `(digest, bytes received so far)` as a [`Progress`], called on every chunk.
pub struct FnProgress<F>(pub F);

impl<F: Fn(&Digest, u64) + Send + Sync> Progress for FnProgress<F> {
    fn advanced(&self, digest: &Digest, received: u64) {
        (self.0)(digest, received);
    }
}
