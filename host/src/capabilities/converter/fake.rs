//! A converter that needs no privileges and no real image: it writes a sparse
//! file with a valid ext4 superblock, and records every job.
//!
//! For guest-logic tests and for embedders testing their own integration.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Mutex;

use super::{ConversionJob, Converted, Converter};
use crate::error::{Error, Result};

/// Image size when the job names none.
const DEFAULT_SIZE: u64 = 8 << 20;

/// What the fake converter does with each job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FakeBehaviour {
    /// Write a valid image.
    #[default]
    Succeed,
    /// Fail with this error.
    Fail(Error),
    /// Write an image without the ext4 magic.
    WriteGarbage,
}

/// The fake converter.
#[derive(Debug, Default)]
pub struct FakeConverter {
    behaviour: Mutex<FakeBehaviour>,
    jobs: Mutex<Vec<ConversionJob>>,
}

impl FakeConverter {
    /// Sets what later jobs do.
    pub fn set_behaviour(&self, behaviour: FakeBehaviour) {
        *self.behaviour.lock().unwrap_or_else(|p| p.into_inner()) = behaviour;
    }

    /// Every job run so far.
    pub fn jobs(&self) -> Vec<ConversionJob> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A superblock for an otherwise empty ext4 image of `size` bytes with 4 KiB
/// blocks: enough for the guest's validation, not for the kernel.
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
    put(0x38, &0xEF53u16.to_le_bytes());
    put(0x3A, &1u16.to_le_bytes()); // clean
    put(0x4C, &1u32.to_le_bytes()); // dynamic revision
    put(0x58, &256u16.to_le_bytes());
    put(0x78, b"fake-rootfs");
    sb
}

#[async_trait::async_trait]
impl Converter for FakeConverter {
    fn identity(&self) -> String {
        "fake 1".into()
    }

    async fn convert(&self, job: ConversionJob) -> Result<Converted> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).push(job.clone());
        let behaviour = self.behaviour.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let FakeBehaviour::Fail(err) = behaviour {
            return Err(err);
        }
        let size = job.size.unwrap_or(DEFAULT_SIZE);
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&job.output)?;
            file.set_len(size)?;
            if behaviour == FakeBehaviour::Succeed {
                file.seek(SeekFrom::Start(1024))?;
                file.write_all(&synthetic_superblock(size))?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&job.output);
            Error::io(job.output.display(), &e)
        })?;
        Ok(Converted::image(size))
    }
}
