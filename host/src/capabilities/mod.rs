//! The privileged capabilities the host lends the guest: one trait per
//! capability, each with a native backend and a fake one.
//!
//! | capability | trait | native | fake |
//! |---|---|---|---|
//! | converter | [`converter::Converter`] (via [`converter::ConverterRegistry`]) | [`converter::native::NativeConverters`]: `exact` (the default), `oci2rootfs` in-process, external command | [`converter::fake::FakeConverter`] |
//! | image mounter (and the sweep's detach) | [`mounter::ImageMounter`] | [`mounter::loop_mount::LoopMounter`]; rootless: [`mounter::debugfs::DebugfsInstaller`] | [`mounter::fake::FakeMounter`] (records) |
//! | publisher | [`publisher::Publisher`] | [`publisher::DurablePublisher`] | the same, without fsync |
//! | lock | [`lock::CrossProcessLock`] behind [`lock::LockService`] | [`lock::Flock`] | [`lock::InProcessOnly`] |
//! | puller (images by name) | [`puller::Puller`] | [`puller::RegistryPuller`] | [`puller::NoNetwork`] (refuses: `denied`) |
//! | Docker engine (`docker-daemon:` images) | [`docker_engine::DockerEngine`] | [`docker_engine::EngineApi`] | [`docker_engine::NoEngine`] (refuses: `denied`) |
//! | remote cache | [`remote::RemoteStore`] | [`remote::RegistryRemote`] | [`remote::NoRemote`] (refuses: `denied`) |
//!
//! The fake adapter needs no root and no loop devices: embedders use it to
//! test their integration, and the guest-logic tests use it.

pub mod converter;
pub mod docker_engine;
pub mod lock;
pub mod mounter;
pub mod publisher;
pub mod puller;
pub mod remote;

use std::sync::Arc;

use converter::exact::ExactConverter;
use converter::fake::FakeConverter;
use converter::native::NativeConverters;
use converter::{Converter, ConverterRegistry};
use mounter::ImageMounter;
use mounter::fake::FakeMounter;
use publisher::{DurablePublisher, Publisher};

use crate::converter_spec::ConverterSpec;
use crate::error::Result;

/// One backend per capability.
#[derive(Clone)]
pub struct Capabilities {
    /// Picks converters by name.
    pub converters: Arc<dyn ConverterRegistry>,
    /// Mounts images for the agent install.
    pub mounter: Arc<dyn ImageMounter>,
    /// Publishes and removes cache files.
    pub publisher: Arc<dyn Publisher>,
    /// Locks across processes.
    pub cross_process_lock: Arc<dyn lock::CrossProcessLock>,
    /// Fetches images by name.
    pub puller: Arc<dyn puller::Puller>,
    /// Reaches the local Docker engine.
    pub docker_engine: Arc<dyn docker_engine::DockerEngine>,
    /// Moves entries to and from a remote cache.
    pub remote: Arc<dyn remote::RemoteStore>,
}

impl Capabilities {
    /// The native backends: real converters, loop devices, fsync, flock.
    pub fn native() -> Self {
        Self::native_with(crate::ext4::Headroom::default())
    }

    /// The native backends, the exact converter leaving `headroom` free when
    /// it sizes an image from its content. Without `CAP_SYS_ADMIN` the agent
    /// is installed with `debugfs` instead of a loop mount.
    pub fn native_with(headroom: crate::ext4::Headroom) -> Self {
        Self::native_with_exact(ExactConverter { headroom, ..ExactConverter::default() })
    }

    /// The native backends, the exact converter configured as given (its
    /// headroom and ext4 profile). Without `CAP_SYS_ADMIN` the agent is
    /// installed with `debugfs` instead of a loop mount.
    pub fn native_with_exact(exact: ExactConverter) -> Self {
        let mounter: Arc<dyn ImageMounter> = if mounter::debugfs::can_mount() {
            Arc::new(mounter::loop_mount::LoopMounter::default())
        } else {
            Arc::new(mounter::debugfs::DebugfsInstaller)
        };
        Self {
            converters: Arc::new(NativeConverters::with_exact(exact)),
            mounter,
            publisher: Arc::new(DurablePublisher::default()),
            cross_process_lock: Arc::new(lock::Flock),
            puller: Arc::new(puller::RegistryPuller::default()),
            docker_engine: Arc::new(docker_engine::EngineApi::from_env()),
            remote: Arc::new(remote::RegistryRemote::default()),
        }
    }

    /// The fake backends, and handles to inspect what they did.
    pub fn fake() -> (Self, FakeHandles) {
        let converter = Arc::new(FakeConverter::default());
        let mounter = FakeMounter::default();
        let caps = Self {
            converters: Arc::new(FakeConverters(converter.clone())),
            mounter: Arc::new(mounter.clone()),
            publisher: Arc::new(DurablePublisher { skip_fsync: true }),
            cross_process_lock: Arc::new(lock::InProcessOnly),
            puller: Arc::new(puller::NoNetwork),
            docker_engine: Arc::new(docker_engine::NoEngine),
            remote: Arc::new(remote::NoRemote),
        };
        (caps, FakeHandles { converter, mounter })
    }
}

impl Capabilities {
    /// Installs the agent with `debugfs` instead of a loop mount.
    pub fn with_debugfs_injection(mut self) -> Self {
        self.mounter = Arc::new(mounter::debugfs::DebugfsInstaller);
        self
    }

    /// Reaches the Docker engine at `socket` instead of the one `DOCKER_HOST` names.
    pub fn with_docker_engine(mut self, socket: impl Into<std::path::PathBuf>) -> Self {
        self.docker_engine = Arc::new(docker_engine::EngineApi::at(socket));
        self
    }

    /// Installs the agent through a loop mount (needs `CAP_SYS_ADMIN`).
    pub fn with_mount_injection(mut self) -> Self {
        self.mounter = Arc::new(mounter::loop_mount::LoopMounter::default());
        self
    }
}

/// What the fake backends recorded.
#[derive(Clone)]
pub struct FakeHandles {
    /// The converter: every job, and a switch to make it fail.
    pub converter: Arc<FakeConverter>,
    /// The mounter: every install.
    pub mounter: FakeMounter,
}

/// Every converter maps to the one fake converter.
struct FakeConverters(Arc<FakeConverter>);

impl ConverterRegistry for FakeConverters {
    fn get(&self, _converter: &ConverterSpec) -> Result<Arc<dyn Converter>> {
        Ok(self.0.clone())
    }
}
