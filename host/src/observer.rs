//! Progress reporting: which step a request is in.

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
        }
    }
}

/// Receives progress. Called from the request's task; keep it quick.
pub trait Observer: Send + Sync {
    /// `phase` started.
    fn phase_started(&self, phase: Phase);
}
