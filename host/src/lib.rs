//! rootfs-cache turns a container image layer (a Docker overlay2 layer
//! directory or an OCI image layout) into a bootable ext4 root filesystem with
//! the runtime's agent at `/sbin/vm-agent`, and caches it so that the next
//! request is a hit.
//!
//! The decisions (source detection, the cache key, entry validation, the
//! order of the build and its cleanup) run in a sandboxed WebAssembly
//! component that sees the filesystem read-only. This crate is its host: it
//! lends the component privileged capabilities (converter, loop mounts,
//! publishing, locks), checks every call against a [`Policy`], and is the
//! library and CLI that users call.
//!
//! # Example
//!
//! This runs anywhere, without root, using the fake capabilities; with
//! [`Config::new`]'s native capabilities the same code builds a real image.
//!
//! ```
//! use rootfs_cache::{Capabilities, Config, Request, RootfsCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // A one-layer overlay2 chain and an agent.
//! let layer = dir.path().join("overlay2/abc");
//! std::fs::create_dir_all(layer.join("diff/etc"))?;
//! std::fs::write(layer.join("link"), "ABC")?;
//! std::fs::write(layer.join("diff/etc/hostname"), "vm\n")?;
//! std::fs::write(dir.path().join("vm-agent"), b"#!/bin/sh\n")?;
//!
//! let (capabilities, _recorded) = Capabilities::fake();
//! let cache = RootfsCache::open(Config::new(dir.path().join("cache")).capabilities(capabilities))?;
//! let request = Request::new(&layer, dir.path().join("vm-agent"));
//!
//! let first = cache.convert(&request).await?;
//! assert!(!first.cached);
//! let second = cache.convert(&request).await?;
//! assert!(second.cached && second.image == first.image);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod admission;
pub mod audit;
mod bindings;
mod cache;
pub mod cache_dir;
pub mod capabilities;
mod clones;
mod config;
mod conversions;
mod converter_spec;
mod deep_verify;
pub mod digest;
mod engine;
mod error;
pub mod fsck;
mod host_impl;
mod image_digest;
pub mod observer;
mod output_tail;
pub mod policy;
mod preopens;
mod probe;
mod real_path;
mod regular_file;
mod remote_cache;
mod reports;
mod request;
mod shared;
mod store;
mod test_hooks;

pub use admission::{SourceRef, source_root};
pub use cache::RootfsCache;
pub use capabilities::converter::exact::Ext4Profile;
pub use capabilities::{Capabilities, FakeHandles};
pub use clones::{CloneMethod, CloneReport};
pub use config::Config;
pub use converter_spec::ConverterSpec;
pub use engine::{ComponentSource, EMBEDDED_COMPONENT, LoadPath};
pub use error::{Error, Result};
pub use observer::{Observer, Phase};
pub use policy::{Limits, Policy};
pub use remote_cache::{RemoteCache, RemoteVerify};
pub use reports::{Entry, GcReport, ImageInfo, Origin, Outcome, SourceKind, SweepReport, Timings, VerifyReport};
pub use request::{PullPolicy, Request};
/// The ext4 image writer, its own crate ([`rootfs_cache_ext4`]).
pub use rootfs_cache_ext4 as ext4;
