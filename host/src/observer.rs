//! Progress reporting: which step a request is in, and the bytes of each blob a pull
//! downloads.

/// A step of a request that takes noticeable time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for another builder of the same key.
    WaitingForLock,
    /// The converter is running.
    Converting,
    /// Mounting the image.
    Mounting,
    /// Installing the agent.
    InstallingAgent,
    /// Unmounting and flushing.
    Unmounting,
    /// fsync and rename into the cache.
    Publishing,
    /// Fetching an image's documents or blobs from its registry.
    Pulling,
    /// Exporting an image from the local Docker engine.
    Exporting,
}

impl Phase {
    /// A few words for a progress line.
    pub fn describe(self) -> &'static str {
        match self {
            Self::WaitingForLock => "waiting for another build of this image",
            Self::Converting => "converting the source to ext4",
            Self::Mounting => "mounting the image",
            Self::InstallingAgent => "installing the agent",
            Self::Unmounting => "unmounting",
            Self::Publishing => "publishing into the cache",
            Self::Pulling => "pulling from the registry",
            Self::Exporting => "exporting from the Docker engine",
        }
    }
}

/// Receives progress. Called from the request's task; keep it quick.
pub trait Observer: Send + Sync {
    /// `phase` started.
    fn phase_started(&self, phase: Phase);

    /// A download of blob `digest` (`sha256:<hex>`, `size` bytes when known) started. Not
    /// called for a blob the cache holds already.
    fn blob_started(&self, digest: &str, size: Option<u64>) {
        let _ = (digest, size);
    }

    /// `received` bytes of blob `digest` have arrived so far (from zero again after a retry).
    fn blob_progress(&self, digest: &str, received: u64) {
        let _ = (digest, received);
    }

    /// Blob `digest` is in the cache; `downloaded` bytes came over the network (0 if none).
    fn blob_finished(&self, digest: &str, downloaded: u64) {
        let _ = (digest, downloaded);
    }
}

/// An [`Observer`]'s blob callbacks as the registry client's progress.
pub(crate) struct BlobProgress(pub(crate) Option<std::sync::Arc<dyn Observer>>);

impl rootfs_cache_registry::Progress for BlobProgress {
    fn started(&self, digest: &rootfs_cache_registry::Digest, size: Option<u64>) {
        if let Some(o) = &self.0 {
            o.blob_started(&digest.to_string(), size);
        }
    }

    fn advanced(&self, digest: &rootfs_cache_registry::Digest, received: u64) {
        if let Some(o) = &self.0 {
            o.blob_progress(&digest.to_string(), received);
        }
    }

    fn finished(&self, digest: &rootfs_cache_registry::Digest, downloaded: u64) {
        if let Some(o) = &self.0 {
            o.blob_finished(&digest.to_string(), downloaded);
        }
    }
}
