//! A native fake of the host, for testing the guest's flows without a wasm
//! runtime, a loop device or privileges.
//!
//! [`FakeHost`] implements [`Capabilities`] (and so [`Probe`]) over a real
//! cache directory on the native filesystem:
//!
//! - `probe` looks at real paths as the Rust host's probe does ([`FsProbe`]):
//!   relative paths are under the cache directory, absolute ones are host
//!   paths; a final symlink is reported, never followed;
//! - `digest-file` hashes the file with SHA-256;
//! - `describe-converter` answers a configurable identity and
//!   `installs-agent` ([`FakeHost::set_converter`]);
//! - `run-converter` writes a small sparse image with a valid ext4 superblock
//!   (or garbage, see [`ConverterOutput`]) at `<cache>/<output>`;
//! - `mount-image`, `install` and `unmount` only record what was installed;
//! - `publish` renames the staged image and writes the manifest, `remove`
//!   removes, `record-use` touches the manifest's modification time;
//! - the build locks are in-process: [`FakeHost::hold`] marks a key as held
//!   by another builder, and [`FakeHost::on_lock`] runs a hook while a
//!   caller "waits" for a lock (another builder publishing meanwhile);
//! - `fsck` answers a configurable result ([`FakeHost::set_fsck`]);
//! - `fetch-manifest` and `fetch-blobs` serve an in-memory registry
//!   ([`FakeHost::serve_manifest`], [`FakeHost::serve_blob`]): documents by
//!   reference, blobs by digest, written into `<cache>/blobs/sha256/` when
//!   fetched; anything not served is `not-found`.
//!
//! Every call is recorded ([`FakeHost::calls`]), and any capability can be
//! made to fail with a chosen error ([`FakeHost::fail`]), so each error class
//! of the WIT can be produced and followed through the guest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::capabilities::{BuildLock, Capabilities, MountedImage};
use crate::key::{CacheKey, hex};
use crate::probe::Probe;
use crate::registry::Puller;
use crate::wit::host::{BlobRequest, ExportedFile, FetchedBlob, FetchedImage, FetchedManifest, PushedBlob};
use crate::wit::host::{
    Conversion, ConverterInfo, FileDigest, FileInstall, FsckResult, PathInfo, PathKind, ProbeRequest,
};
use crate::wit::types::{Denial, Error, PullPolicy};

/// Most paths one probe call may name (the Rust host's limit).
pub const MAX_PROBE_PATHS: usize = 256;
/// Most bytes one probed path may ask to read (the WIT's limit).
pub const MAX_PROBE_READ_BYTES: u32 = 64 << 10;
/// Most bytes one probe call may ask to read, over all its paths.
pub const MAX_PROBE_TOTAL_BYTES: u64 = 1 << 20;
/// The size of an image the fake converter writes when the job names none.
pub const DEFAULT_IMAGE_BYTES: u64 = 8 << 20;

/// The probe over the real filesystem, as the Rust host answers it.
///
/// A relative path is looked up under the cache directory, an absolute one
/// as it is. Like the host it refuses a path with a `..` or `.` component
/// (`invalid-request`), reports a final symlink with its target without
/// following it, reads the head of a regular file only, and gives birth
/// times where the filesystem has them (0 elsewhere). With source roots
/// ([`FsProbe::with_source_roots`]) an absolute path under none of them is
/// `denied` by `source_roots`; unlike the host, symlinks in a path's parent
/// directories are followed wherever they lead.
#[derive(Clone, Debug)]
pub struct FsProbe {
    cache_root: PathBuf,
    source_roots: Option<Vec<PathBuf>>,
}

impl FsProbe {
    /// A probe whose relative paths are under `cache_root`, and which
    /// answers every absolute path.
    pub fn new(cache_root: impl Into<PathBuf>) -> Self {
        Self { cache_root: cache_root.into(), source_roots: None }
    }

    /// The same probe, answering absolute paths under `roots` only.
    pub fn with_source_roots(mut self, roots: impl IntoIterator<Item = PathBuf>) -> Self {
        self.source_roots = Some(roots.into_iter().collect());
        self
    }

    /// Where relative paths are looked up.
    pub fn cache_root(&self) -> &Path {
        &self.cache_root
    }

    /// Where `request` points, or why it may not be looked at.
    fn locate(&self, request: &ProbeRequest) -> Result<PathBuf, Error> {
        if request.read_bytes > MAX_PROBE_READ_BYTES {
            return Err(Error::InvalidRequest(format!(
                "probe asked for {} bytes of {}; the limit is {MAX_PROBE_READ_BYTES}",
                request.read_bytes, request.path
            )));
        }
        let path = Path::new(&request.path);
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return Err(Error::InvalidRequest(format!("{} is not a normalised path", request.path)));
        }
        if !path.is_absolute() {
            return Ok(self.cache_root.join(path));
        }
        if let Some(roots) = &self.source_roots
            && !roots.iter().any(|root| path.starts_with(root))
        {
            return Err(Error::Denied(Denial {
                rule: "source_roots".into(),
                detail: format!("{} is outside the source of this request", request.path),
            }));
        }
        Ok(path.to_path_buf())
    }

    /// Looks at one path.
    fn look(path: &Path, read_bytes: u32) -> std::io::Result<PathInfo> {
        let meta = std::fs::symlink_metadata(path)?;
        let t = meta.file_type();
        let kind = if t.is_file() {
            PathKind::File
        } else if t.is_dir() {
            PathKind::Directory
        } else if t.is_symlink() {
            PathKind::Symlink
        } else {
            PathKind::Other
        };
        let link_target =
            t.is_symlink().then(|| std::fs::read_link(path).map(|p| p.as_os_str().as_bytes().to_vec())).transpose()?;
        let mut head = Vec::new();
        if t.is_file() && read_bytes > 0 {
            std::fs::File::open(path)?.take(u64::from(read_bytes)).read_to_end(&mut head)?;
        }
        Ok(PathInfo {
            kind,
            size: meta.len(),
            modified_ns: nanos(meta.modified()),
            created_ns: nanos(meta.created()),
            link_target,
            head,
        })
    }
}

impl Probe for FsProbe {
    fn probe(&self, requests: &[ProbeRequest]) -> Result<Vec<Result<PathInfo, Error>>, Error> {
        if requests.len() > MAX_PROBE_PATHS {
            return Err(Error::InvalidRequest(format!(
                "probe was given {} paths; the limit is {MAX_PROBE_PATHS}",
                requests.len()
            )));
        }
        let total: u64 = requests.iter().map(|r| u64::from(r.read_bytes)).sum();
        if total > MAX_PROBE_TOTAL_BYTES {
            return Err(Error::InvalidRequest(format!(
                "probe asked for {total} bytes in all; the limit is {MAX_PROBE_TOTAL_BYTES}"
            )));
        }
        Ok(requests
            .iter()
            .map(|r| {
                let path = self.locate(r)?;
                Self::look(&path, r.read_bytes).map_err(|e| io_error(&r.path, &e))
            })
            .collect())
    }
}

/// Nanoseconds since the Unix epoch of a file time, 0 when unknown.
fn nanos(time: std::io::Result<SystemTime>) -> u64 {
    time.ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64)
}

/// An I/O error on `what` as the host reports it: `not-found`, `no-space`
/// or `io`.
fn io_error(what: impl std::fmt::Display, err: &std::io::Error) -> Error {
    match err.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("{what}: {err}")),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Error::NoSpace(format!("{what}: {err}")),
        _ => Error::Io(format!("{what}: {err}")),
    }
}

/// One capability of the `host` interface (with the two methods of a
/// mounted image), to make fail or to count calls of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `host.probe` (the whole call).
    Probe,
    /// `host.digest-file`.
    DigestFile,
    /// `host.describe-converter`.
    DescribeConverter,
    /// `host.run-converter`.
    RunConverter,
    /// `host.mount-image`.
    MountImage,
    /// `mounted-image.install`.
    Install,
    /// `mounted-image.unmount`.
    Unmount,
    /// `host.publish`.
    Publish,
    /// `host.remove`.
    Remove,
    /// `host.record-use`.
    RecordUse,
    /// `host.lock`.
    Lock,
    /// `host.try-lock`.
    TryLock,
    /// `host.fsck`.
    Fsck,
    /// `host.fetch-manifest`.
    FetchManifest,
    /// `host.fetch-blobs`.
    FetchBlobs,
    /// `host.inspect-daemon-image`.
    InspectDaemonImage,
    /// `host.export-daemon-image`.
    ExportDaemonImage,
    /// `host.remote-manifest`.
    RemoteManifest,
    /// `host.remote-blob`.
    RemoteBlob,
    /// `host.remote-image`.
    RemoteImage,
    /// `host.remote-push-image`.
    RemotePushImage,
    /// `host.remote-push-blob`.
    RemotePushBlob,
    /// `host.remote-push-manifest`.
    RemotePushManifest,
    /// `host.digest-image`.
    DigestImage,
}

/// One recorded call, with its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `probe`, with the paths asked about.
    Probe(Vec<ProbeRequest>),
    /// `digest-file`, with the path.
    DigestFile(String),
    /// `describe-converter`, with the converter's name.
    DescribeConverter(String),
    /// `run-converter`, with the job.
    RunConverter(Conversion),
    /// `mount-image`, with the image.
    MountImage(String),
    /// `install` into the mounted `image`.
    Install {
        /// The mounted image.
        image: String,
        /// What was installed.
        file: FileInstall,
    },
    /// `unmount` of the image.
    Unmount(String),
    /// A mounted image dropped without `unmount` (which unmounts too).
    DropMount(String),
    /// `publish`, with its arguments.
    Publish {
        /// The staged image.
        staged: String,
        /// Where it went.
        image: String,
        /// The manifest's path.
        manifest: String,
        /// The manifest's contents.
        manifest_json: String,
    },
    /// `remove`, with the path.
    Remove(String),
    /// `record-use`, with the manifest.
    RecordUse(String),
    /// `lock`, with the key.
    Lock(String),
    /// `try-lock`, with the key.
    TryLock(String),
    /// `build-lock.fail` of the lock for `key`.
    LockFail {
        /// The lock's key.
        key: String,
        /// The build's error.
        reason: Error,
    },
    /// `fsck`, with the image.
    Fsck(String),
    /// `fetch-manifest`, with the reference and the pull policy.
    FetchManifest(String, PullPolicy),
    /// `fetch-blobs`, with the repository and the digests asked for.
    FetchBlobs(String, Vec<String>),
    /// `inspect-daemon-image`, with the name.
    InspectDaemonImage(String),
    /// `export-daemon-image`, with the name.
    ExportDaemonImage(String),
    /// `remote-manifest`, with the tag.
    RemoteManifest(String),
    /// `remote-blob`, with the digest.
    RemoteBlob(String),
    /// `remote-image`, with the digest and the staged path.
    RemoteImage(String, String),
    /// `remote-push-image`, with the image.
    RemotePushImage(String),
    /// `remote-push-blob`, with the blob's length.
    RemotePushBlob(usize),
    /// `remote-push-manifest`, with the tag.
    RemotePushManifest(String),
    /// `digest-image`, with the image.
    DigestImage(String),
}

impl Call {
    /// The capability called, `None` for the two calls that cannot fail
    /// ([`Call::DropMount`], [`Call::LockFail`]).
    pub fn capability(&self) -> Option<Capability> {
        Some(match self {
            Self::Probe(_) => Capability::Probe,
            Self::DigestFile(_) => Capability::DigestFile,
            Self::DescribeConverter(_) => Capability::DescribeConverter,
            Self::RunConverter(_) => Capability::RunConverter,
            Self::MountImage(_) => Capability::MountImage,
            Self::Install { .. } => Capability::Install,
            Self::Unmount(_) => Capability::Unmount,
            Self::Publish { .. } => Capability::Publish,
            Self::Remove(_) => Capability::Remove,
            Self::RecordUse(_) => Capability::RecordUse,
            Self::Lock(_) => Capability::Lock,
            Self::TryLock(_) => Capability::TryLock,
            Self::Fsck(_) => Capability::Fsck,
            Self::FetchManifest(..) => Capability::FetchManifest,
            Self::FetchBlobs(..) => Capability::FetchBlobs,
            Self::InspectDaemonImage(_) => Capability::InspectDaemonImage,
            Self::ExportDaemonImage(_) => Capability::ExportDaemonImage,
            Self::RemoteManifest(_) => Capability::RemoteManifest,
            Self::RemoteBlob(_) => Capability::RemoteBlob,
            Self::RemoteImage(..) => Capability::RemoteImage,
            Self::RemotePushImage(_) => Capability::RemotePushImage,
            Self::RemotePushBlob(_) => Capability::RemotePushBlob,
            Self::RemotePushManifest(_) => Capability::RemotePushManifest,
            Self::DigestImage(_) => Capability::DigestImage,
            Self::DropMount(_) | Self::LockFail { .. } => return None,
        })
    }
}

/// What the fake converter writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConverterOutput {
    /// A sparse image with a valid ext4 superblock ([`synthetic_superblock`]).
    #[default]
    Valid,
    /// A sparse image of zeroes, without the ext4 magic.
    Garbage,
}

/// A hook run while a caller waits for a lock.
type Hook = Box<dyn FnOnce() + Send>;

/// Who holds a key's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// A lock this fake handed out.
    Us,
    /// Another builder ([`FakeHost::hold`]).
    Other,
}

/// Everything the fake remembers, shared with the locks and mounts it hands
/// out.
struct State {
    calls: Vec<Call>,
    failures: BTreeMap<Capability, Error>,
    converter: ConverterInfo,
    output: ConverterOutput,
    fsck: FsckResult,
    fsck_of: BTreeMap<String, FsckResult>,
    held: BTreeMap<String, Holder>,
    hooks: BTreeMap<String, Hook>,
    tokens: u64,
    /// The fake registry's documents: reference → (bytes, media type).
    manifests: BTreeMap<String, (Vec<u8>, String)>,
    /// The fake registry's blobs, by digest.
    blobs: BTreeMap<String, Vec<u8>>,
    /// The fake Docker engine's images, by every name they answer to.
    daemon_images: BTreeMap<String, DaemonImage>,
    /// Blobs of the cache's store whose lock a pull holds ([`FakeHost::hold_blob`]).
    held_blobs: BTreeSet<String>,
    /// The fake remote cache (shared between fake hosts by
    /// [`FakeHost::share_remote`]).
    remote: Arc<Mutex<FakeRemote>>,
}

/// The fake remote cache: an in-memory registry repository. Images are
/// stored as they are (the fake compresses nothing).
#[derive(Debug, Default)]
pub struct FakeRemote {
    /// Manifests by tag.
    pub manifests: BTreeMap<String, Vec<u8>>,
    /// Blobs by digest.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// An image of the fake Docker engine.
#[derive(Clone)]
struct DaemonImage {
    /// Its inspect document.
    inspect: Vec<u8>,
    /// The files its export holds, in order: name and bytes.
    archive: Vec<(String, Vec<u8>)>,
}

/// The fake host. See the module's documentation.
#[derive(Clone)]
pub struct FakeHost {
    probe: FsProbe,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost").field("cache", &self.probe.cache_root).finish_non_exhaustive()
    }
}

/// Locks the state, whatever a panicking test left in it.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeHost {
    /// A host serving the cache directory `cache` (created with its
    /// `images/`, `tmp/` and `locks/`, as a host does before the guest
    /// runs), with the converter `fake 1`, which does not install the agent.
    pub fn new(cache: impl Into<PathBuf>) -> std::io::Result<Self> {
        let cache = cache.into();
        for area in ["images", "tmp", "locks"] {
            std::fs::create_dir_all(cache.join(area))?;
        }
        let state = State {
            calls: Vec::new(),
            failures: BTreeMap::new(),
            converter: ConverterInfo { identity: "fake 1".into(), installs_agent: false },
            output: ConverterOutput::Valid,
            fsck: FsckResult { clean: true, exit_status: 0, output_tail: String::new() },
            fsck_of: BTreeMap::new(),
            held: BTreeMap::new(),
            hooks: BTreeMap::new(),
            tokens: 0,
            manifests: BTreeMap::new(),
            blobs: BTreeMap::new(),
            daemon_images: BTreeMap::new(),
            held_blobs: BTreeSet::new(),
            remote: Arc::default(),
        };
        Ok(Self { probe: FsProbe::new(cache), state: Arc::new(Mutex::new(state)) })
    }

    /// The same host, its probe answering absolute paths under `roots`
    /// only (see [`FsProbe::with_source_roots`]).
    pub fn with_source_roots(mut self, roots: impl IntoIterator<Item = PathBuf>) -> Self {
        self.probe = self.probe.with_source_roots(roots);
        self
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        self.probe.cache_root()
    }

    /// What `describe-converter` answers from now on.
    pub fn set_converter(&self, identity: &str, installs_agent: bool) {
        lock(&self.state).converter = ConverterInfo { identity: identity.into(), installs_agent };
    }

    /// What `run-converter` writes from now on.
    pub fn set_converter_output(&self, output: ConverterOutput) {
        lock(&self.state).output = output;
    }

    /// What `fsck` answers from now on for every image without a result of
    /// its own ([`FakeHost::set_fsck_of`]).
    pub fn set_fsck(&self, result: FsckResult) {
        lock(&self.state).fsck = result;
    }

    /// What `fsck` answers from now on for `image`.
    pub fn set_fsck_of(&self, image: &str, result: FsckResult) {
        lock(&self.state).fsck_of.insert(image.into(), result);
    }

    /// Makes every later call of `capability` fail with `error` (until
    /// [`FakeHost::succeed`]). The call is still recorded.
    pub fn fail(&self, capability: Capability, error: Error) {
        lock(&self.state).failures.insert(capability, error);
    }

    /// Undoes [`FakeHost::fail`] for `capability`.
    pub fn succeed(&self, capability: Capability) {
        lock(&self.state).failures.remove(&capability);
    }

    /// Marks the lock of `key` as held by another builder: `try-lock`
    /// answers `none`, and `lock` runs the key's hook ([`FakeHost::on_lock`])
    /// and then takes it. A `lock` of a held key without a hook would wait
    /// forever: it panics instead.
    pub fn hold(&self, key: &str) {
        lock(&self.state).held.insert(key.into(), Holder::Other);
    }

    /// Releases what [`FakeHost::hold`] held.
    pub fn release(&self, key: &str) {
        let mut state = lock(&self.state);
        if state.held.get(key) == Some(&Holder::Other) {
            state.held.remove(key);
        }
    }

    /// Runs `hook` on the next `lock` of `key`, before the lock is taken: what
    /// happened while the caller waited (another builder publishing the
    /// entry, say). The other builder then lets the lock go.
    pub fn on_lock(&self, key: &str, hook: impl FnOnce() + Send + 'static) {
        lock(&self.state).hooks.insert(key.into(), Box::new(hook));
    }

    /// Serves `bytes` as the document `reference` names (a
    /// `docker://HOST/REPO:TAG` or `…@sha256:HEX` as the guest writes it),
    /// and by its digest in the same repository.
    pub fn serve_manifest(&self, reference: &str, bytes: &[u8], media_type: &str) {
        let digest = format!("sha256:{}", hex(&Sha256::digest(bytes)));
        let repository = reference.split_once('@').map_or(reference, |(r, _)| r);
        let slash = repository.rfind('/').unwrap_or(0);
        let repository = match repository[slash..].rfind(':') {
            Some(i) => &repository[..slash + i],
            None => repository,
        };
        let mut state = lock(&self.state);
        state.manifests.insert(reference.into(), (bytes.to_vec(), media_type.into()));
        state.manifests.insert(format!("{repository}@{digest}"), (bytes.to_vec(), media_type.into()));
    }

    /// Makes the fake Docker engine hold an image under each of `names`: `inspect` is its
    /// inspect document, `archive` the files its export holds, in order.
    pub fn serve_daemon_image(&self, names: &[&str], inspect: &[u8], archive: &[(&str, &[u8])]) {
        let image = DaemonImage {
            inspect: inspect.to_vec(),
            archive: archive.iter().map(|(n, b)| ((*n).to_owned(), b.to_vec())).collect(),
        };
        let mut state = lock(&self.state);
        for name in names {
            state.daemon_images.insert((*name).to_owned(), image.clone());
        }
    }

    /// Serves `bytes` as a blob of every repository; returns its digest.
    pub fn serve_blob(&self, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", hex(&Sha256::digest(bytes)));
        lock(&self.state).blobs.insert(digest.clone(), bytes.to_vec());
        digest
    }

    /// The fake remote cache this host talks to.
    pub fn remote(&self) -> Arc<Mutex<FakeRemote>> {
        lock(&self.state).remote.clone()
    }

    /// Makes this host talk to `remote` (another fake host's), as hosts of
    /// one fleet share one registry.
    pub fn share_remote(&self, remote: Arc<Mutex<FakeRemote>>) {
        lock(&self.state).remote = remote;
    }

    /// Marks the blob `hex` of the cache's store as held by a pull (its
    /// digest's lock): `remove` keeps it, as the Rust host does.
    pub fn hold_blob(&self, hex: &str) {
        lock(&self.state).held_blobs.insert(hex.into());
    }

    /// Whether anyone (a lock of this fake, or another builder) holds the
    /// lock of `key`.
    pub fn is_held(&self, key: &str) -> bool {
        lock(&self.state).held.contains_key(key)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// How many times `capability` was called.
    pub fn count(&self, capability: Capability) -> usize {
        lock(&self.state).calls.iter().filter(|c| c.capability() == Some(capability)).count()
    }

    /// Every conversion job run so far.
    pub fn jobs(&self) -> Vec<Conversion> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::RunConverter(job) => Some(job),
                _ => None,
            })
            .collect()
    }

    /// Every file installed into an image so far: by `install` into a
    /// mounted image, or by a converter that installs the agent itself (the
    /// job's `agent`), with the image it went into.
    pub fn installs(&self) -> Vec<(String, FileInstall)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Install { image, file } => Some((image, file)),
                Call::RunConverter(Conversion { output, agent: Some(agent), .. }) => Some((output, agent)),
                _ => None,
            })
            .collect()
    }

    /// Every path `remove` was called with.
    pub fn removed(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Remove(path) => Some(path),
                _ => None,
            })
            .collect()
    }

    /// Forgets every call recorded so far.
    pub fn clear_calls(&self) {
        lock(&self.state).calls.clear();
    }

    /// Records `call`, then fails it if a test asked for that.
    fn call(&self, call: Call) -> Result<(), Error> {
        let mut state = lock(&self.state);
        let failure = call.capability().and_then(|c| state.failures.get(&c).cloned());
        state.calls.push(call);
        failure.map_or(Ok(()), Err)
    }

    /// `<cache>/<path>` for a cache-relative path.
    fn in_cache(&self, path: &str) -> PathBuf {
        self.cache_dir().join(path)
    }

    /// A lock of `key` handed to the caller.
    fn take(&self, state: &mut State, key: &str) -> Result<FakeLock, Error> {
        let lock_file = self.in_cache(&format!("locks/{key}.lock"));
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)
            .map_err(|e| io_error(format_args!("locks/{key}.lock"), &e))?;
        state.held.insert(key.into(), Holder::Us);
        state.tokens += 1;
        Ok(FakeLock {
            state: self.state.clone(),
            key: key.into(),
            token: format!("{}-{}", std::process::id(), state.tokens),
            lock_file,
        })
    }
}

/// Checks a lock's key as the host does.
fn check_key(key: &str) -> Result<(), Error> {
    match CacheKey::parse(key) {
        Some(_) => Ok(()),
        None => Err(Error::InvalidRequest(format!("lock key {key:?} is not 64 lowercase hex digits"))),
    }
}

/// A superblock for an otherwise empty ext4 image of `size` bytes with 4 KiB
/// blocks: enough for the guest's validation, not for the kernel. The same
/// as the host's fake converter writes.
pub fn synthetic_superblock(size: u64) -> [u8; 1024] {
    let blocks = size / 4096;
    let groups = blocks.div_ceil(32768).max(1);
    let mut sb = [0u8; 1024];
    let mut put = |at: usize, bytes: &[u8]| sb[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x00, &((groups * 128) as u32).to_le_bytes()); // inodes
    put(0x04, &(blocks as u32).to_le_bytes());
    put(0x0C, &((blocks / 2) as u32).to_le_bytes()); // free blocks
    put(0x10, &((groups * 128 - 11) as u32).to_le_bytes()); // free inodes
    put(0x18, &2u32.to_le_bytes()); // 4 KiB blocks
    put(0x1C, &2u32.to_le_bytes()); // cluster size
    put(0x20, &32768u32.to_le_bytes());
    put(0x24, &32768u32.to_le_bytes());
    put(0x28, &128u32.to_le_bytes());
    put(0x38, &crate::ext4::EXT4_MAGIC.to_le_bytes());
    put(0x3A, &1u16.to_le_bytes()); // clean
    put(0x4C, &1u32.to_le_bytes()); // dynamic revision
    put(0x58, &256u16.to_le_bytes());
    put(0x78, b"fake-rootfs");
    sb
}

/// Writes a new sparse image of `size` bytes at `path`: with
/// [`synthetic_superblock`] for [`ConverterOutput::Valid`], all zeroes for
/// [`ConverterOutput::Garbage`].
pub fn write_image(path: &Path, size: u64, output: ConverterOutput) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.set_len(size)?;
    if output == ConverterOutput::Valid {
        file.seek(SeekFrom::Start(crate::ext4::SUPERBLOCK_OFFSET))?;
        file.write_all(&synthetic_superblock(size))?;
    }
    Ok(())
}

impl Probe for FakeHost {
    fn probe(&self, requests: &[ProbeRequest]) -> Result<Vec<Result<PathInfo, Error>>, Error> {
        self.call(Call::Probe(requests.to_vec()))?;
        self.probe.probe(requests)
    }
}

impl Puller for FakeHost {
    fn fetch_manifest(&self, reference: &str, pull: PullPolicy) -> Result<FetchedManifest, Error> {
        self.call(Call::FetchManifest(reference.into(), pull))?;
        let state = lock(&self.state);
        let (bytes, media_type) = state
            .manifests
            .get(reference)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("not found in the fake registry: {reference}")))?;
        // As the Rust host does, every document fetched is stored as a blob.
        let digest_hex = hex(&Sha256::digest(&bytes));
        let dir = self.in_cache("blobs/sha256");
        std::fs::create_dir_all(&dir).map_err(|e| io_error("blobs/sha256", &e))?;
        std::fs::write(dir.join(&digest_hex), &bytes).map_err(|e| io_error("blobs/sha256", &e))?;
        Ok(FetchedManifest { digest: format!("sha256:{digest_hex}"), bytes, media_type })
    }

    fn fetch_blobs(
        &self,
        reference: &str,
        blobs: &[BlobRequest],
        _pull: PullPolicy,
    ) -> Result<Vec<FetchedBlob>, Error> {
        self.call(Call::FetchBlobs(reference.into(), blobs.iter().map(|b| b.digest.clone()).collect()))?;
        let dir = self.in_cache("blobs/sha256");
        std::fs::create_dir_all(&dir).map_err(|e| io_error("blobs/sha256", &e))?;
        let state = lock(&self.state);
        let mut answers = Vec::with_capacity(blobs.len());
        for blob in blobs {
            let bytes = state.blobs.get(&blob.digest).ok_or_else(|| {
                Error::NotFound(format!("not found in the fake registry: {reference}@{}", blob.digest))
            })?;
            let hex_part = blob.digest.strip_prefix("sha256:").unwrap_or(&blob.digest);
            let path = dir.join(hex_part);
            std::fs::write(&path, bytes).map_err(|e| io_error(path.display(), &e))?;
            answers.push(FetchedBlob {
                path: path.to_string_lossy().into_owned(),
                contents: blob.read.then(|| bytes.clone()),
            });
        }
        Ok(answers)
    }
}

impl crate::daemon::Engine for FakeHost {
    fn inspect_daemon_image(&self, name: &str) -> Result<Vec<u8>, Error> {
        self.call(Call::InspectDaemonImage(name.into()))?;
        let state = lock(&self.state);
        let image = state
            .daemon_images
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("the fake Docker engine has no image {name:?}")))?;
        Ok(image.inspect.clone())
    }

    fn export_daemon_image(&self, name: &str) -> Result<Vec<ExportedFile>, Error> {
        self.call(Call::ExportDaemonImage(name.into()))?;
        let dir = self.in_cache("blobs/sha256");
        std::fs::create_dir_all(&dir).map_err(|e| io_error("blobs/sha256", &e))?;
        let state = lock(&self.state);
        let image = state
            .daemon_images
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("the fake Docker engine has no image {name:?}")))?;
        let mut exported = Vec::with_capacity(image.archive.len());
        for (file_name, bytes) in &image.archive {
            let hex_part = hex(&Sha256::digest(bytes));
            let path = dir.join(&hex_part);
            std::fs::write(&path, bytes).map_err(|e| io_error(path.display(), &e))?;
            exported.push(ExportedFile {
                name: file_name.clone(),
                digest: format!("sha256:{hex_part}"),
                size: bytes.len() as u64,
                path: path.to_string_lossy().into_owned(),
            });
        }
        Ok(exported)
    }
}

impl FakeHost {
    fn fake_remote(&self) -> Arc<Mutex<FakeRemote>> {
        self.remote()
    }

    /// A blob of the fake remote cache, checked against its descriptor.
    fn remote_bytes(&self, digest: &str, size: u64) -> Result<Vec<u8>, Error> {
        let remote = self.fake_remote();
        let remote = remote.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = remote
            .blobs
            .get(digest)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("the fake remote cache has no blob {digest}")))?;
        let actual = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        if actual != digest || bytes.len() as u64 != size {
            return Err(Error::Corrupt(format!("blob {digest} of the fake remote cache is {actual}")));
        }
        Ok(bytes)
    }

    fn push_bytes(&self, bytes: Vec<u8>) -> PushedBlob {
        let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        let size = bytes.len() as u64;
        let remote = self.fake_remote();
        remote.lock().unwrap_or_else(|p| p.into_inner()).blobs.insert(digest.clone(), bytes);
        PushedBlob { digest, size }
    }
}

impl crate::remote::Remote for FakeHost {
    fn remote_manifest(&self, tag: &str) -> Result<Option<FetchedManifest>, Error> {
        self.call(Call::RemoteManifest(tag.into()))?;
        let remote = self.fake_remote();
        let remote = remote.lock().unwrap_or_else(|p| p.into_inner());
        Ok(remote.manifests.get(tag).map(|bytes| FetchedManifest {
            digest: format!("sha256:{}", hex(&Sha256::digest(bytes))),
            bytes: bytes.clone(),
            media_type: crate::remote::MANIFEST_TYPE.into(),
        }))
    }

    fn remote_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>, Error> {
        self.call(Call::RemoteBlob(digest.into()))?;
        self.remote_bytes(digest, size)
    }

    fn remote_image(&self, digest: &str, size: u64, staged: &str) -> Result<FetchedImage, Error> {
        self.call(Call::RemoteImage(digest.into(), staged.into()))?;
        let bytes = self.remote_bytes(digest, size)?;
        let path = self.in_cache(staged);
        std::fs::write(&path, &bytes).map_err(|e| io_error(staged, &e))?;
        Ok(FetchedImage { bytes: size, sha256: digest.to_owned() })
    }

    fn remote_push_image(&self, image: &str) -> Result<PushedBlob, Error> {
        self.call(Call::RemotePushImage(image.into()))?;
        let bytes = std::fs::read(self.in_cache(image)).map_err(|e| io_error(image, &e))?;
        Ok(self.push_bytes(bytes))
    }

    fn remote_push_blob(&self, bytes: &[u8]) -> Result<PushedBlob, Error> {
        self.call(Call::RemotePushBlob(bytes.len()))?;
        Ok(self.push_bytes(bytes.to_vec()))
    }

    fn remote_push_manifest(&self, tag: &str, bytes: &[u8]) -> Result<String, Error> {
        self.call(Call::RemotePushManifest(tag.into()))?;
        let remote = self.fake_remote();
        remote.lock().unwrap_or_else(|p| p.into_inner()).manifests.insert(tag.into(), bytes.to_vec());
        Ok(format!("sha256:{}", hex(&Sha256::digest(bytes))))
    }

    fn digest_image(&self, image: &str) -> Result<FileDigest, Error> {
        self.call(Call::DigestImage(image.into()))?;
        let bytes = std::fs::read(self.in_cache(image)).map_err(|e| io_error(image, &e))?;
        Ok(FileDigest { sha256: hex(&Sha256::digest(&bytes)), size: bytes.len() as u64 })
    }
}

impl Capabilities for FakeHost {
    type Lock = FakeLock;
    type Mounted = FakeMount;

    fn digest_file(&self, path: &str) -> Result<FileDigest, Error> {
        self.call(Call::DigestFile(path.into()))?;
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
        if !meta.is_file() {
            return Err(Error::InvalidRequest(format!("{path} is not a regular file")));
        }
        let bytes = std::fs::read(path).map_err(|e| io_error(path, &e))?;
        Ok(FileDigest { sha256: hex(&Sha256::digest(&bytes)), size: bytes.len() as u64 })
    }

    fn describe_converter(&self, converter: &str) -> Result<ConverterInfo, Error> {
        self.call(Call::DescribeConverter(converter.into()))?;
        Ok(lock(&self.state).converter.clone())
    }

    fn run_converter(&self, job: &Conversion) -> Result<u64, Error> {
        self.call(Call::RunConverter(job.clone()))?;
        let output = lock(&self.state).output;
        let size = job.size.unwrap_or(DEFAULT_IMAGE_BYTES);
        let path = self.in_cache(&job.output);
        write_image(&path, size, output).map_err(|e| {
            // As the host does: on failure, whatever was written goes.
            let _ = std::fs::remove_file(&path);
            io_error(&job.output, &e)
        })?;
        Ok(size)
    }

    fn mount_image(&self, image: &str) -> Result<FakeMount, Error> {
        self.call(Call::MountImage(image.into()))?;
        std::fs::metadata(self.in_cache(image)).map_err(|e| io_error(image, &e))?;
        Ok(FakeMount { host: self.clone(), image: image.into(), unmounted: false })
    }

    fn publish(&self, staged: &str, image: &str, manifest: &str, manifest_json: &str) -> Result<(), Error> {
        self.call(Call::Publish {
            staged: staged.into(),
            image: image.into(),
            manifest: manifest.into(),
            manifest_json: manifest_json.into(),
        })?;
        // As the Rust host's publisher does, the image's SHA-256 is added to
        // the manifest (one that does not parse is written as given).
        let bytes = std::fs::read(self.in_cache(staged)).map_err(|e| io_error(staged, &e))?;
        let manifest_json = match crate::manifest::Manifest::parse(manifest_json.as_bytes()) {
            Ok(parsed) => {
                crate::manifest::Manifest { image_sha256: Some(hex(&Sha256::digest(&bytes))), ..parsed }.to_json()
            }
            Err(_) => manifest_json.to_owned(),
        };
        std::fs::rename(self.in_cache(staged), self.in_cache(image)).map_err(|e| io_error(staged, &e))?;
        let temporary = self.in_cache(&format!("{manifest}.tmp"));
        std::fs::write(&temporary, manifest_json).map_err(|e| io_error(manifest, &e))?;
        std::fs::rename(&temporary, self.in_cache(manifest)).map_err(|e| io_error(manifest, &e))
    }

    fn remove(&self, path: &str) -> Result<(), Error> {
        self.call(Call::Remove(path.into()))?;
        if let Some(blob) = path.strip_prefix("blobs/sha256/") {
            // As the Rust host does: a held blob stays; a free one goes with its lock file.
            if lock(&self.state).held_blobs.contains(blob) {
                return Ok(());
            }
            for file in [path.to_owned(), format!("blobs/locks/{blob}.lock")] {
                match std::fs::remove_file(self.in_cache(&file)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(file, &e)),
                    _ => {}
                }
            }
            return Ok(());
        }
        let full = self.in_cache(path);
        let removed = match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir(&full),
            Ok(_) => std::fs::remove_file(&full),
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(path, &e)),
            _ => Ok(()),
        }
    }

    fn record_use(&self, manifest: &str) -> Result<(), Error> {
        self.call(Call::RecordUse(manifest.into()))?;
        let file = std::fs::OpenOptions::new().write(true).open(self.in_cache(manifest));
        file.and_then(|f| f.set_modified(SystemTime::now())).map_err(|e| io_error(manifest, &e))
    }

    fn lock(&self, key: &str) -> Result<FakeLock, Error> {
        self.call(Call::Lock(key.into()))?;
        check_key(key)?;
        let hook = lock(&self.state).hooks.remove(key);
        if let Some(hook) = hook {
            // What happened while this caller waited; then the other
            // builder lets the lock go.
            hook();
            self.release(key);
        }
        let mut state = lock(&self.state);
        if let Some(holder) = state.held.get(key).copied() {
            drop(state);
            panic!("the fake host's lock of {key} is held ({holder:?}) and no hook releases it: it would wait forever");
        }
        self.take(&mut state, key)
    }

    fn try_lock(&self, key: &str) -> Result<Option<FakeLock>, Error> {
        self.call(Call::TryLock(key.into()))?;
        check_key(key)?;
        let mut state = lock(&self.state);
        if state.held.contains_key(key) {
            return Ok(None);
        }
        self.take(&mut state, key).map(Some)
    }

    fn fsck(&self, image: &str) -> Result<FsckResult, Error> {
        self.call(Call::Fsck(image.into()))?;
        std::fs::metadata(self.in_cache(image)).map_err(|e| io_error(image, &e))?;
        let state = lock(&self.state);
        Ok(state.fsck_of.get(image).unwrap_or(&state.fsck).clone())
    }
}

/// A build lock of the fake host: `locks/<key>.lock` exists while it is
/// held, and goes when it is dropped (as the WIT asks of every host).
#[derive(Debug)]
pub struct FakeLock {
    state: Arc<Mutex<State>>,
    key: String,
    token: String,
    lock_file: PathBuf,
}

impl FakeLock {
    /// The key it locks.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl BuildLock for FakeLock {
    fn token(&self) -> String {
        self.token.clone()
    }

    fn fail(&self, reason: &Error) {
        lock(&self.state).calls.push(Call::LockFail { key: self.key.clone(), reason: reason.clone() });
    }
}

impl Drop for FakeLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock_file);
        let mut state = lock(&self.state);
        if state.held.get(&self.key) == Some(&Holder::Us) {
            state.held.remove(&self.key);
        }
    }
}

/// An image "mounted" by the fake host: installs are only recorded.
#[derive(Debug)]
pub struct FakeMount {
    host: FakeHost,
    image: String,
    unmounted: bool,
}

impl MountedImage for FakeMount {
    fn install(&self, file: &FileInstall) -> Result<(), Error> {
        self.host.call(Call::Install { image: self.image.clone(), file: file.clone() })
    }

    fn unmount(mut self) -> Result<(), Error> {
        self.unmounted = true;
        self.host.call(Call::Unmount(self.image.clone()))
    }
}

impl Drop for FakeMount {
    fn drop(&mut self) {
        if !self.unmounted {
            lock(&self.host.state).calls.push(Call::DropMount(self.image.clone()));
        }
    }
}

/// The number of calls and the held keys: the hooks cannot be shown.
impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: BTreeSet<&String> = self.held.keys().collect();
        f.debug_struct("State").field("calls", &self.calls.len()).field("held", &held).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_converter_writes_an_image_the_guest_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.ext4");
        write_image(&path, DEFAULT_IMAGE_BYTES, ConverterOutput::Valid).unwrap();
        let superblock = |path: &Path| {
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(bytes.len() as u64, DEFAULT_IMAGE_BYTES);
            crate::ext4::Superblock::parse(&bytes[1024..2048]).unwrap()
        };
        assert_eq!(superblock(&path).check_geometry(DEFAULT_IMAGE_BYTES), Ok(()));
        let garbage = dir.path().join("garbage.ext4");
        write_image(&garbage, DEFAULT_IMAGE_BYTES, ConverterOutput::Garbage).unwrap();
        assert!(superblock(&garbage).check_geometry(DEFAULT_IMAGE_BYTES).unwrap_err().contains("no ext4 magic"));
    }

    #[test]
    fn the_probe_refuses_what_the_host_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let probe = FsProbe::new(dir.path()).with_source_roots([dir.path().join("src")]);
        let ask = |path: &str, read_bytes: u32| {
            probe.probe(&[ProbeRequest { path: path.into(), read_bytes }]).unwrap().pop().unwrap()
        };
        assert!(matches!(ask("images/../secret", 0), Err(Error::InvalidRequest(_))));
        assert!(matches!(ask("/etc/passwd", 0), Err(Error::Denied(d)) if d.rule == "source_roots"));
        assert!(matches!(ask("images/missing.json", 0), Err(Error::NotFound(_))));
        assert!(matches!(ask("images", MAX_PROBE_READ_BYTES + 1), Err(Error::InvalidRequest(_))));
        std::fs::create_dir(dir.path().join("images")).unwrap();
        std::fs::write(dir.path().join("images/a"), "abc").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("images/l")).unwrap();
        let file = ask("images/a", 2).unwrap();
        assert_eq!((file.kind, file.size, file.head.as_slice()), (PathKind::File, 3, &b"ab"[..]));
        let link = ask("images/l", 2).unwrap();
        assert_eq!((link.kind, link.link_target.as_deref(), link.head.len()), (PathKind::Symlink, Some(&b"a"[..]), 0));
        let many = vec![ProbeRequest { path: "images".into(), read_bytes: 0 }; MAX_PROBE_PATHS + 1];
        assert!(matches!(probe.probe(&many), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn locks_are_exclusive_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost::new(dir.path()).unwrap();
        let key = "a".repeat(64);
        let held = host.try_lock(&key).unwrap().expect("a free lock");
        assert!(dir.path().join(format!("locks/{key}.lock")).exists());
        assert!(host.try_lock(&key).unwrap().is_none());
        assert_ne!(held.token(), "");
        drop(held);
        assert!(!dir.path().join(format!("locks/{key}.lock")).exists());
        host.hold(&key);
        assert!(host.try_lock(&key).unwrap().is_none());
        assert!(matches!(host.try_lock("not-a-key"), Err(Error::InvalidRequest(_))));
        host.fail(Capability::TryLock, Error::Io("boom".into()));
        assert_eq!(host.try_lock(&key).unwrap_err(), Error::Io("boom".into()));
        assert_eq!(host.count(Capability::TryLock), 5);
    }
}
