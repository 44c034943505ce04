//! Which remote cache a cache uses, and how far it trusts it: the caller's
//! choice ([`crate::Config::remote`], the CLI's `--remote`) within what the
//! policy allows (`remote`, `remote_push`, `remote_verify`, `registries`).

use rootfs_cache_registry::Reference;

use crate::error::{Error, Result};

/// How an entry fetched from a remote cache is checked before it is
/// published. Either way it passes every check a fresh build passes and its
/// SHA-256 must match the artifact's annotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteVerify {
    /// Those checks only.
    #[default]
    Digest,
    /// Also build the image here and compare the bytes: a mismatch is
    /// `Corrupt` and nothing is published.
    Rebuild,
}

impl std::str::FromStr for RemoteVerify {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "digest" => Ok(Self::Digest),
            "rebuild" => Ok(Self::Rebuild),
            other => Err(Error::Config(format!("remote verification {other:?} is unknown; use digest or rebuild"))),
        }
    }
}

/// A remote cache: an OCI registry repository holding one artifact per
/// cache key, tagged with the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCache {
    /// `HOST[:PORT]/REPO`.
    pub repository: String,
    /// Push what this host builds.
    pub push: bool,
    /// How fetched entries are checked.
    pub verify: RemoteVerify,
}

impl RemoteCache {
    /// The repository `HOST[:PORT]/REPO`, pushing, checked by digest.
    /// Errors: `Config` (not `HOST[:PORT]/REPO`).
    pub fn new(repository: &str) -> Result<Self> {
        check_repository(repository)?;
        Ok(Self { repository: repository.to_owned(), push: true, verify: RemoteVerify::Digest })
    }

    /// The same, pushing or not.
    pub fn push(mut self, push: bool) -> Self {
        self.push = push;
        self
    }

    /// The same, checked as `verify` says.
    pub fn verify(mut self, verify: RemoteVerify) -> Self {
        self.verify = verify;
        self
    }

    /// The repository's registry, `HOST[:PORT]`.
    pub fn registry(&self) -> &str {
        self.repository.split_once('/').map_or(&self.repository, |(host, _)| host)
    }

    /// The artifact of `key`: the repository at tag `key`.
    pub(crate) fn tagged(&self, key: &str) -> Result<Reference> {
        format!("{}:{key}", self.repository)
            .parse()
            .map_err(|e| Error::InvalidRequest(format!("remote cache {}: {e}", self.repository)))
    }

    /// The policy's `remote`, pushing, checked by digest.
    pub(crate) fn from_policy(repository: String) -> Self {
        Self { repository, push: true, verify: RemoteVerify::Digest }
    }
}

/// Checks `HOST[:PORT]/REPO`: an explicit registry host (a `.` or a `:`
/// in it, or `localhost`), and a repository that parses.
pub(crate) fn check_repository(repository: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Config(format!("remote cache {repository:?} {why}; give HOST[:PORT]/REPO")));
    let Some((host, path)) = repository.split_once('/') else { return bad("names no repository") };
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return bad("names no registry host");
    }
    if path.contains(['@', ':']) {
        return bad("has a tag or digest");
    }
    match format!("{repository}:x").parse::<Reference>() {
        Ok(parsed) if parsed.registry() == host => Ok(()),
        Ok(_) => bad("names no registry host"),
        Err(e) => Err(Error::Config(format!("remote cache {repository:?}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_needs_a_host_and_no_tag() {
        assert!(RemoteCache::new("127.0.0.1:5000/fleet/images").is_ok());
        assert!(RemoteCache::new("registry.example.com/cache").is_ok());
        for bad in ["cache", "library/cache", "127.0.0.1:5000", "host.test/repo:tag", "host.test/Repo", "host.test/"] {
            assert!(RemoteCache::new(bad).is_err(), "{bad}");
        }
        let remote = RemoteCache::new("127.0.0.1:5000/fleet/images").unwrap();
        assert_eq!(remote.registry(), "127.0.0.1:5000");
        assert_eq!(remote.tagged(&"a".repeat(64)).unwrap().tag(), Some("a".repeat(64).as_str()));
    }
}
