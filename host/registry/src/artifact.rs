//! Cache entries shared through a registry as OCI 1.1 artifacts: a manifest tagged with the
//! cache key, the entry's JSON as its config, the ext4 image compressed with zstd as its one
//! layer. The guest builds and parses the manifest and config; this module only moves bytes:
//!
//! - [`RegistryClient::fetch_tagged_manifest`], [`RegistryClient::fetch_blob_bytes`]: small
//!   documents, bounded and verified.
//! - [`RegistryClient::fetch_zstd_image`]: the image, verified while it streams, decoded on a
//!   blocking thread into a sparse file, bounded against zstd bombs.
//! - [`RegistryClient::push_zstd_image`], [`RegistryClient::push_blob_bytes`],
//!   [`RegistryClient::push_manifest_bytes`]: uploads (`POST` then one `PUT` per blob), skipped
//!   when the registry has the blob already (`HEAD`), with a push-scoped token.
//!
//! The upload requests are this crate's own (not `oci-client`'s) for the same reason as the
//! downloads: the upload location the registry names is checked against the allow-list, the
//! body streams from a file, and the credentials go only to the registry's own host.

use std::fs::File;
use std::io::{self, Read, Seek as _};
use std::path::Path;

use bytes::Bytes;
use oci_client::RegistryOperation;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

use crate::client::{HostClient, RegistryClient, authorize, host_port, repository_url};
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::manifest::RawManifest;
use crate::progress::{NoProgress, Progress};
use crate::reference::Reference;
use crate::sparse::{DecodeError, HashingWriter, compress_sparse, decode_sparse};

/// What downloading an image wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnpackedImage {
    /// The decoded length: the file's length.
    pub bytes: u64,
    /// The SHA-256 of the decoded bytes (holes read as zeroes).
    pub sha256: Digest,
}

/// A blob as pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its length.
    pub size: u64,
}

/// The media type of an OCI image manifest (what artifacts are pushed as).
pub const OCI_MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Chunks of a compressed image queued between the network and the decoder (each at most a
/// few hundred KiB as `hyper` reads them).
const QUEUED_CHUNKS: usize = 16;

/// The size of a read from the compressed file while uploading it.
const UPLOAD_CHUNK: usize = 256 << 10;

/// What the network side hands the decoder.
enum Chunk {
    Data(Bytes),
    /// The blob is complete and verified: the decoder may finish.
    End,
}

/// The chunks of a channel as a blocking [`Read`]; a channel closed without [`Chunk::End`]
/// (the download failed or was dropped) is an error, never a clean end.
struct ChannelReader {
    chunks: mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.chunks.blocking_recv() {
                Some(Chunk::Data(data)) => self.current = data,
                Some(Chunk::End) => self.ended = true,
                None => return Err(io::Error::other("the download stopped before the end of the blob")),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A blocking task's result; its panic is resumed here.
fn joined<T>(result: Result<T, tokio::task::JoinError>, what: &str) -> Result<T, RegistryError> {
    match result {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(RegistryError::File { what: what.to_owned(), source: io::Error::other(e.to_string()) }),
    }
}

/// `HOST[:PORT]/repository`, as errors about a repository name it.
fn repository_name(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

impl RegistryClient {
    /// GET the manifest `reference` names (a tag), accepting OCI manifests; Ok(None) when the
    /// registry answers 404 (MANIFEST_UNKNOWN, NAME_UNKNOWN: no such tag or repository).
    /// At most MAX_MANIFEST_BYTES; digest = sha256 of the bytes.
    pub async fn fetch_tagged_manifest(&self, reference: &Reference) -> Result<Option<RawManifest>, RegistryError> {
        match self.fetch_manifest_accepting(reference, OCI_MANIFEST_TYPE).await {
            Ok(manifest) => Ok(Some(manifest)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A small blob's bytes (at most MAX_MANIFEST_BYTES), verified against digest and size.
    pub async fn fetch_blob_bytes(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("{}@{digest}", repository_name(reference));
        let limit = self.config.max_manifest_bytes;
        if size > limit {
            return Err(RegistryError::TooLarge { what, limit });
        }
        let host = self.host_client(reference).await?;
        let mut response = self.get(&host, reference, &format!("blobs/{digest}"), "*/*", &what).await?;
        let corrupt = |reason: String| RegistryError::Corrupt { digest: digest.clone(), what: what.clone(), reason };
        if let Some(announced) = response.content_length()
            && announced != size
        {
            return Err(corrupt(format!("the registry announced {announced} bytes, not {size}")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify_transport(&host.host, &e))? {
            if (bytes.len() + chunk.len()) as u64 > size {
                return Err(corrupt(format!("more than the expected {size} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != size {
            return Err(corrupt(format!("the stream ended after {} of {size} bytes", bytes.len())));
        }
        let got = Digest::of(&bytes);
        if got != *digest {
            return Err(corrupt(format!("the bytes received have digest {got}")));
        }
        Ok(bytes)
    }

    /// Streams blob `digest` (declared length `size`) of the repository, verifying digest and
    /// length while it streams, zstd-decodes it and writes the result into `out` (an empty
    /// file the caller created) SPARSELY: every 4 KiB block of zeroes is skipped (seek), the
    /// file's length set at the end, so holes stay holes. Stops with an error as soon as the
    /// decoded length would pass `max_bytes` (a zstd bomb). Returns the decoded length and
    /// its SHA-256. A digest/length mismatch is an error that names the digest.
    ///
    /// `out` is truncated first, and truncated again when the download fails, so that it
    /// never holds part of an image. Decoding runs on a blocking thread fed through a bounded
    /// queue; the decoder may use a window of at most 32 MiB. `progress` hears of the
    /// compressed bytes received.
    pub async fn fetch_zstd_image(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        out: &mut std::fs::File,
        max_bytes: u64,
        progress: &dyn Progress,
    ) -> Result<UnpackedImage, RegistryError> {
        let result = self.fetch_zstd_image_into(reference, digest, size, out, max_bytes, progress).await;
        if result.is_err() {
            let _ = out.set_len(0);
        }
        result
    }

    async fn fetch_zstd_image_into(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        out: &File,
        max_bytes: u64,
        progress: &dyn Progress,
    ) -> Result<UnpackedImage, RegistryError> {
        let what = format!("{}@{digest}", repository_name(reference));
        let write_error =
            |source: io::Error| RegistryError::File { what: format!("writing the image of {what}"), source };
        let corrupt = |reason: String| RegistryError::Corrupt { digest: digest.clone(), what: what.clone(), reason };
        let host = self.host_client(reference).await?;
        out.set_len(0).map_err(write_error)?;
        let target = out.try_clone().map_err(write_error)?;
        progress.started(digest, Some(size));
        let mut response = self.get(&host, reference, &format!("blobs/{digest}"), "*/*", &what).await?;
        if let Some(announced) = response.content_length()
            && announced != size
        {
            return Err(corrupt(format!("the registry announced {announced} bytes, not {size}")));
        }

        let (sender, chunks) = mpsc::channel(QUEUED_CHUNKS);
        let mut decoder = tokio::task::spawn_blocking(move || {
            decode_sparse(ChannelReader { chunks, current: Bytes::new(), ended: false }, &target, max_bytes)
        });
        // The network side: every chunk hashed and counted before the decoder sees it; the
        // end is sent only once the whole blob has its digest and length.
        let mut sender = Some(sender);
        let mut early: Option<Result<(u64, Digest), DecodeError>> = None;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        // Ok(true) once the blob's length and digest are checked and the decoder told to finish.
        let streamed: Result<bool, RegistryError> = async {
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        let why = crate::classify::describe(&e);
                        return Err(corrupt(format!("the stream broke after {received} bytes: {why}")));
                    }
                };
                received += chunk.len() as u64;
                if received > size {
                    return Err(corrupt(format!("more than the expected {size} bytes")));
                }
                hasher.update(&chunk);
                progress.advanced(digest, received);
                if let Some(queue) = &sender
                    && queue.send(Chunk::Data(chunk)).await.is_err()
                {
                    // The decoder stopped: on bytes that are not zstd, keep hashing (a
                    // corrupted download is then reported as such); on anything else, stop.
                    sender = None;
                    let result = joined((&mut decoder).await, "decoding the image")?;
                    let invalid = matches!(result, Err(DecodeError::Zstd(_)));
                    early = Some(result);
                    if !invalid {
                        return Ok(false);
                    }
                }
            }
            if received != size {
                return Err(corrupt(format!("the stream ended after {received} of {size} bytes")));
            }
            let got = Digest::from_sha256(hasher.finalize_reset().into());
            if got != *digest {
                return Err(corrupt(format!("the bytes received have digest {got}")));
            }
            match sender.take() {
                Some(queue) => Ok(queue.send(Chunk::End).await.is_ok()),
                None => Ok(false),
            }
        }
        .await;
        // Closing the queue stops the decoder if it still runs (without `End`, as an error).
        drop(sender);
        let decoded = match early {
            Some(result) => result,
            None => joined(decoder.await, "decoding the image")?,
        };
        let verified = streamed?;
        match decoded {
            Ok(_) if !verified => Err(corrupt("the decoder stopped before the end of the blob".to_owned())),
            Ok((bytes, sha256)) => {
                progress.finished(digest, received);
                Ok(UnpackedImage { bytes, sha256 })
            }
            Err(DecodeError::TooLarge) => {
                Err(RegistryError::TooLarge { what: format!("the image decoded from {what}"), limit: max_bytes })
            }
            Err(DecodeError::Zstd(e)) => Err(corrupt(format!("it is not a valid zstd stream: {e}"))),
            Err(DecodeError::Write(e)) => Err(write_error(e)),
        }
    }

    /// Compresses the file `image` with zstd (level 3, single-threaded or with a fixed
    /// worker count: the output must be the same bytes for the same input every time) into a
    /// temporary file created in `scratch_dir` (removed afterwards, also on error), reading
    /// only its data (SEEK_DATA/SEEK_HOLE: holes are fed to the encoder as zeroes without
    /// reading them), then uploads it unless the repository has it already (HEAD), and
    /// returns its descriptor.
    ///
    /// Single-threaded, with zstd's checksum in the frame. The temporary file is unnamed
    /// (`O_TMPFILE`, or created and unlinked at once), so it goes away with its descriptor,
    /// even if the process dies. `progress` hears of the upload (not of the compression,
    /// whose digest is not known until it ends); `finished` with 0 when the blob was there.
    pub async fn push_zstd_image(
        &self,
        reference: &Reference,
        image: &std::path::Path,
        scratch_dir: &std::path::Path,
        progress: &dyn Progress,
    ) -> Result<PushedBlob, RegistryError> {
        // The allow-list and the registry's token service are checked before the long part.
        let host = self.host_client(reference).await?;
        let (image, scratch) = (image.to_owned(), scratch_dir.to_owned());
        let compressed = tokio::task::spawn_blocking(move || compress_to_scratch(&image, &scratch));
        let (file, digest, size) = joined(compressed.await, "compressing the image")??;
        let token = self.push_token(&host, reference).await?;
        if self.blob_exists(&host, token.as_deref(), reference, &digest).await? {
            progress.finished(&digest, 0);
            return Ok(PushedBlob { digest, size });
        }
        progress.started(&digest, Some(size));
        let file = tokio::fs::File::from_std(file);
        self.upload(&host, token.as_deref(), reference, &digest, size, file, progress).await?;
        progress.finished(&digest, size);
        Ok(PushedBlob { digest, size })
    }

    /// Uploads `bytes` as a blob unless present (HEAD); returns its descriptor.
    pub async fn push_blob_bytes(&self, reference: &Reference, bytes: &[u8]) -> Result<PushedBlob, RegistryError> {
        let digest = Digest::of(bytes);
        let size = bytes.len() as u64;
        let host = self.host_client(reference).await?;
        let token = self.push_token(&host, reference).await?;
        if !self.blob_exists(&host, token.as_deref(), reference, &digest).await? {
            self.upload(&host, token.as_deref(), reference, &digest, size, bytes, &NoProgress).await?;
        }
        Ok(PushedBlob { digest, size })
    }

    /// PUTs `bytes` as the manifest `reference` names (its tag), with `media_type` as
    /// Content-Type; returns the manifest's digest.
    ///
    /// At most the configured manifest limit (4 MiB). A reference that pins a digest pushes
    /// by that digest, which must be the bytes'.
    pub async fn push_manifest_bytes(
        &self,
        reference: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let what = reference.to_string();
        let digest = Digest::of(bytes);
        let limit = self.config.max_manifest_bytes;
        if bytes.len() as u64 > limit {
            return Err(RegistryError::TooLarge { what, limit });
        }
        if let Some(expected) = reference.digest()
            && *expected != digest
        {
            return Err(RegistryError::Corrupt {
                digest: expected.clone(),
                what,
                reason: format!("the manifest's bytes have digest {digest}"),
            });
        }
        let host = self.host_client(reference).await?;
        let content_type = reqwest::header::HeaderValue::from_str(media_type).map_err(|_| RegistryError::Protocol {
            host: host.host.clone(),
            reason: format!("media type {media_type:?} cannot be sent as a Content-Type"),
        })?;
        let token = self.push_token(&host, reference).await?;
        let url = format!("{}manifests/{}", repository_url(&host, reference), reference.manifest_selector());
        let request = host.http.put(&url).header(reqwest::header::CONTENT_TYPE, content_type).body(bytes.to_vec());
        let response = authorize(&host, token.as_deref(), request)
            .send()
            .await
            .map_err(|e| self.classify_transport(&host.host, &e))?;
        let response = self.pushed(&host, reference, response, &what).await?;
        self.check_announced(&host, &response, &digest, &what)?;
        Ok(digest)
    }

    /// The token for pushing to `reference`'s repository; refused credentials are
    /// [`RegistryError::PushDenied`].
    async fn push_token(&self, host: &HostClient, reference: &Reference) -> Result<Option<String>, RegistryError> {
        let what = repository_name(reference);
        self.token(host, reference, RegistryOperation::Push, &what).await.map_err(|e| push_denied(e, reference))
    }

    /// Whether the repository has blob `digest` (`HEAD`).
    async fn blob_exists(
        &self,
        host: &HostClient,
        token: Option<&str>,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let url = format!("{}blobs/{digest}", repository_url(host, reference));
        let response = authorize(host, token, host.http.head(&url))
            .send()
            .await
            .map_err(|e| self.classify_transport(&host.host, &e))?;
        match response.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            code => Err(push_denied(
                self.status(host, &format!("{}@{digest}", repository_name(reference)), code),
                reference,
            )),
        }
    }

    /// Uploads one blob: `POST …/blobs/uploads/`, then one `PUT` of `source` (`size` bytes)
    /// to the location the registry names, which must be an allowed host over the registry's
    /// scheme (the credentials go along only when it is the registry's own host).
    ///
    /// The body streams through a small queue. A registry that stops reading it for the read
    /// timeout, or that does not answer within the read timeout plus a second per MiB once it
    /// was all handed over, ends the upload ([`RegistryError::Unreachable`]); a large upload
    /// that keeps moving may otherwise take as long as it needs.
    #[expect(clippy::too_many_arguments, reason = "the blob's parts and where it goes, all needed")]
    async fn upload(
        &self,
        host: &HostClient,
        token: Option<&str>,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        mut source: impl tokio::io::AsyncRead + Unpin + Send,
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let what = format!("{}@{digest}", repository_name(reference));
        let (url, same_host) = self.upload_location(host, token, reference, digest, &what).await?;
        let stall = self.config.read_timeout;
        let stalled = |reason: String| RegistryError::Unreachable { host: host.host.clone(), reason };

        let (queue, chunks) = mpsc::channel::<io::Result<Bytes>>(4);
        let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(chunks, |mut chunks| async move {
            chunks.recv().await.map(|chunk| (chunk, chunks))
        }));
        let (fed_all, sent_all) = tokio::sync::oneshot::channel::<bool>();
        let what_ref = what.as_str();
        let feed = async move {
            let mut sent: u64 = 0;
            let result = loop {
                let mut buffer = vec![0u8; UPLOAD_CHUNK];
                let n = match source.read(&mut buffer).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) => {
                        break Err(RegistryError::File { what: format!("reading {what_ref} to upload it"), source: e });
                    }
                };
                buffer.truncate(n);
                match tokio::time::timeout(stall, queue.send(Ok(Bytes::from(buffer)))).await {
                    Ok(Ok(())) => {}
                    // The request ended early; its result says why.
                    Ok(Err(_)) => break Ok(()),
                    Err(_) => {
                        break Err(stalled(format!(
                            "it stopped reading the upload of {digest} after {sent} bytes for {} s",
                            stall.as_secs()
                        )));
                    }
                }
                sent += n as u64;
                progress.advanced(digest, sent);
            };
            // A body cut short (the queue closed without its last bytes) fails the request.
            drop(queue);
            let _ = fed_all.send(result.is_ok());
            result
        };
        let mut request = host
            .upload_http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body);
        if same_host {
            request = authorize(host, token, request);
        }
        let put = async {
            let response = request.send().await.map_err(|e| self.classify_transport(&host.host, &e))?;
            let response = self.pushed(host, reference, response, &what).await?;
            self.check_announced(host, &response, digest, &what)
        };
        // Once the body is all handed over, the socket's buffers still drain and the registry
        // may check or move the blob: the answer may take the read timeout plus a second per
        // MiB. A failed feed ends the request at once.
        let answer_within = stall + std::time::Duration::from_secs(size >> 20);
        let watchdog = async {
            if sent_all.await == Ok(true) {
                tokio::time::sleep(answer_within).await;
            }
        };
        let put = async {
            match futures_util::future::select(std::pin::pin!(put), std::pin::pin!(watchdog)).await {
                futures_util::future::Either::Left((result, _)) => result,
                futures_util::future::Either::Right(((), _)) => Err(stalled(format!(
                    "no answer to the upload of {digest} within {} s of its end",
                    answer_within.as_secs()
                ))),
            }
        };
        let (uploaded, fed) = futures_util::future::join(put, feed).await;
        fed?;
        uploaded
    }

    /// Starts an upload (`POST …/blobs/uploads/`) and returns where its bytes go, with the
    /// digest (an allowed host, over the registry's scheme or HTTPS), and whether that is the
    /// registry's own host.
    async fn upload_location(
        &self,
        host: &HostClient,
        token: Option<&str>,
        reference: &Reference,
        digest: &Digest,
        what: &str,
    ) -> Result<(reqwest::Url, bool), RegistryError> {
        let protocol = |reason: String| RegistryError::Protocol { host: host.host.clone(), reason };
        let start = format!("{}blobs/uploads/", repository_url(host, reference));
        let request = host.http.post(&start).header(reqwest::header::CONTENT_LENGTH, 0);
        let response =
            authorize(host, token, request).send().await.map_err(|e| self.classify_transport(&host.host, &e))?;
        let response = self.pushed(host, reference, response, what).await?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| protocol(format!("no upload location for {what}")))?;
        let start_url = reqwest::Url::parse(&start).map_err(|e| protocol(format!("upload URL {start:?}: {e}")))?;
        let mut url = start_url.join(location).map_err(|e| protocol(format!("upload location {location:?}: {e}")))?;
        let target = host_port(&url).unwrap_or_default();
        if host_port(&url) != host_port(&start_url) && !self.config.is_allowed(&target) {
            return Err(RegistryError::Denied { host: target });
        }
        if url.scheme() != "https" && url.scheme() != host.scheme {
            return Err(protocol(format!("upload location {location:?} is not over {}", host.scheme)));
        }
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let same_host = host_port(&url) == host_port(&start_url);
        Ok((url, same_host))
    }

    /// The response of a push request if it succeeded; else its error: 401 and 403 are
    /// [`RegistryError::PushDenied`], anything else names the status and the start of what
    /// the registry said.
    async fn pushed(
        &self,
        host: &HostClient,
        reference: &Reference,
        response: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(response);
        }
        if matches!(status, 401 | 403) {
            return Err(push_denied(self.status(host, what, status), reference));
        }
        let said = excerpt(response).await;
        Err(RegistryError::Protocol { host: host.host.clone(), reason: format!("HTTP {status} for {what}: {said:?}") })
    }

    /// Refuses a `Docker-Content-Digest` that is not `digest`.
    fn check_announced(
        &self,
        host: &HostClient,
        response: &reqwest::Response,
        digest: &Digest,
        what: &str,
    ) -> Result<(), RegistryError> {
        let announced = response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok());
        match announced {
            Some(text) if text.parse::<Digest>().is_ok_and(|d| d != *digest) => Err(RegistryError::Protocol {
                host: host.host.clone(),
                reason: format!("{what} was stored as {text:?}, not {digest}"),
            }),
            _ => Ok(()),
        }
    }
}

/// [`RegistryError::Unauthorized`] of a push as [`RegistryError::PushDenied`].
fn push_denied(error: RegistryError, reference: &Reference) -> RegistryError {
    match error {
        RegistryError::Unauthorized { host, status, helper, .. } => {
            RegistryError::PushDenied { host, repository: reference.repository().to_owned(), status, helper }
        }
        other => other,
    }
}

/// The first few hundred bytes of an error response, as text.
async fn excerpt(mut response: reqwest::Response) -> String {
    const MAX: usize = 512;
    let mut bytes = Vec::new();
    while bytes.len() < MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(MAX - bytes.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

/// Compresses `image` into an unnamed temporary file in `scratch`; returns the file and the
/// compressed bytes' digest and length.
fn compress_to_scratch(image: &Path, scratch: &Path) -> Result<(File, Digest, u64), RegistryError> {
    let source = File::open(image)
        .map_err(|source| RegistryError::File { what: format!("reading the image {}", image.display()), source })?;
    let temp = tempfile::tempfile_in(scratch).map_err(|source| RegistryError::File {
        what: format!("creating a temporary file in {}", scratch.display()),
        source,
    })?;
    let mut writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, &temp));
    compress_sparse(&source, &mut writer).map_err(|source| RegistryError::File {
        what: format!("compressing {} into {}", image.display(), scratch.display()),
        source,
    })?;
    let (buffered, digest, size) = writer.finish();
    drop(buffered);
    let mut temp = temp;
    temp.rewind()
        .map_err(|source| RegistryError::File { what: "rewinding the compressed image".to_owned(), source })?;
    Ok((temp, digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_reader_ends_only_on_end() {
        let (sender, chunks) = mpsc::channel(4);
        sender.try_send(Chunk::Data(Bytes::from_static(b"hello "))).unwrap();
        sender.try_send(Chunk::Data(Bytes::from_static(b"world"))).unwrap();
        sender.try_send(Chunk::End).unwrap();
        let mut reader = ChannelReader { chunks, current: Bytes::new(), ended: false };
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello world");

        let (sender, chunks) = mpsc::channel(4);
        sender.try_send(Chunk::Data(Bytes::from_static(b"partial"))).unwrap();
        drop(sender);
        let mut reader = ChannelReader { chunks, current: Bytes::new(), ended: false };
        let mut bytes = Vec::new();
        assert!(reader.read_to_end(&mut bytes).is_err(), "a dropped download is not a clean end");
    }
}
