//! HTTP/1.1 to the engine over its unix socket (hyper's client connection), one
//! connection per request, as the Docker CLI does.

use std::io;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyDataStream, BodyExt as _, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rootfs_cache_registry::BlobStore;
use serde::Deserialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::archive::{self, ArchiveFile};
use crate::error::EngineError;
use crate::host::DockerHost;
use crate::info::EngineInfo;
use crate::name::check_image_name;

/// The longest inspect document read (4 MiB, the limit of any document the guest parses).
pub const MAX_INSPECT_BYTES: u64 = 4 << 20;
/// The longest `GET /info` answer read.
const MAX_INFO_BYTES: u64 = 1 << 20;
/// The longest error body read, for its message.
const MAX_ERROR_BYTES: u64 = 64 << 10;

/// A client of one local engine.
#[derive(Clone, Debug)]
pub struct EngineClient {
    host: DockerHost,
}

/// The engine's error body: `{"message": "..."}`.
#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

impl EngineClient {
    /// A client of the engine at `host`. Nothing is sent until a request.
    pub fn new(host: DockerHost) -> Self {
        Self { host }
    }

    /// The engine this client talks to.
    pub fn host(&self) -> &DockerHost {
        &self.host
    }

    /// The engine's root directory and storage driver (`GET /info`).
    pub async fn info(&self) -> Result<EngineInfo, EngineError> {
        let response = self.get("/info", "").await?;
        let body = self.body(response, "GET /info", MAX_INFO_BYTES).await?;
        EngineInfo::parse(&body).map_err(|message| self.protocol("GET /info", message))
    }

    /// The image's inspect document (`GET /images/{name}/json`, what `docker image
    /// inspect` prints), unparsed.
    pub async fn inspect(&self, name: &str) -> Result<Vec<u8>, EngineError> {
        check_image_name(name)?;
        let response = self.get(&format!("/images/{name}/json"), name).await?;
        self.body(response, "the image's inspect document", MAX_INSPECT_BYTES).await
    }

    /// Exports the image (`GET /images/{name}/get`, the archive `docker save` writes) into
    /// `store` while it streams: every regular file of the archive becomes the blob its
    /// SHA-256 names ([`archive::store_archive`]); more than `limit` bytes in all is
    /// [`EngineError::TooLarge`]. Returns the files in archive order.
    pub async fn export(&self, name: &str, store: &BlobStore, limit: u64) -> Result<Vec<ArchiveFile>, EngineError> {
        check_image_name(name)?;
        let response = self.get(&format!("/images/{name}/get"), name).await?;
        let stream = BodyDataStream::new(response.into_body()).map_err(io::Error::other);
        let reader = SyncIoBridge::new(StreamReader::new(stream));
        let store = store.clone();
        tokio::task::spawn_blocking(move || archive::store_archive(reader, &store, limit))
            .await
            .map_err(|e| EngineError::Archive(format!("the export stopped: {e}")))?
    }

    /// Sends `GET path` and returns a successful response; 404 is
    /// [`EngineError::NotFound`] for `name`, any other failure status
    /// [`EngineError::Protocol`] with the engine's message.
    async fn get(&self, path: &str, name: &str) -> Result<Response<Incoming>, EngineError> {
        let socket = self.host.socket();
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| EngineError::NotRunning { socket: socket.to_path_buf(), reason: e.to_string() })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(&format!("GET {path}"), e.to_string()))?;
        // The connection is driven until the response's body is read or dropped.
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(http::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.protocol(&format!("GET {path}"), e.to_string()))?;
        let response =
            sender.send_request(request).await.map_err(|e| self.protocol(&format!("GET {path}"), e.to_string()))?;
        match response.status() {
            StatusCode::OK => Ok(response),
            StatusCode::NOT_FOUND if !name.is_empty() => {
                Err(EngineError::NotFound { socket: socket.to_path_buf(), name: name.to_owned() })
            }
            status => {
                let body = Limited::new(response.into_body(), MAX_ERROR_BYTES as usize)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|e| e.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
                Err(self.protocol(&format!("GET {path} with HTTP {}", status.as_u16()), message))
            }
        }
    }

    /// The whole body, at most `limit` bytes.
    async fn body(&self, response: Response<Incoming>, what: &str, limit: u64) -> Result<Vec<u8>, EngineError> {
        match Limited::new(response.into_body(), limit as usize).collect().await {
            Ok(body) => Ok(body.to_bytes().to_vec()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(EngineError::TooLarge { what: what.to_owned(), limit })
            }
            Err(e) => Err(self.protocol(what, e.to_string())),
        }
    }

    fn protocol(&self, what: &str, message: String) -> EngineError {
        EngineError::Protocol { socket: self.host.socket().to_path_buf(), what: what.to_owned(), message }
    }
}
