//! Small file-system helpers whose whole point is the order of fsyncs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;

use crate::StorageError;

/// Makes a rename, create or unlink inside `dir` durable: on Linux the directory entry is only
/// on disk once the directory itself is fsynced.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` so that after a crash the file holds either the old or the new
/// content, never a mix or nothing: write a sibling temp file, fsync it, rename it over `path`,
/// fsync the directory. Returns only when all of that is on disk.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tmp_path(path);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// An exclusive advisory lock on `dir/LOCK`, held as long as any store handle lives. Two
/// writers on one WAL would interleave records and break every invariant below.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        file.try_lock_exclusive()
            .map_err(|_| StorageError::Locked(dir.to_path_buf()))?;
        Ok(DirLock { _file: file })
    }
}

/// Checksummed, length-prefixed framing shared by WAL segments and snapshot files:
/// `[len: u32 LE][crc32(payload): u32 LE][payload: len bytes]`.
pub(crate) mod frame {
    use std::io::{self, Read};

    pub(crate) const HEADER: usize = 8;
    /// No record is ever this large; a bigger length is garbage, not a reason to allocate.
    pub(crate) const MAX_LEN: usize = 256 << 20;

    pub(crate) fn encode_into(out: &mut Vec<u8>, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(payload);
    }

    /// Why the bytes at an offset are not a valid frame.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum Bad {
        /// The buffer ends inside the frame (a torn write).
        Short,
        TooLong(usize),
        Checksum,
    }

    impl std::fmt::Display for Bad {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Bad::Short => f.write_str("truncated record"),
                Bad::TooLong(n) => write!(f, "record length {n} is implausible"),
                Bad::Checksum => f.write_str("checksum mismatch"),
            }
        }
    }

    /// Decodes the frame starting at `buf[0]`; returns its payload and total size.
    pub(crate) fn decode(buf: &[u8]) -> Result<(&[u8], usize), Bad> {
        if buf.len() < HEADER {
            return Err(Bad::Short);
        }
        let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
        if len > MAX_LEN {
            return Err(Bad::TooLong(len));
        }
        let end = HEADER + len;
        if buf.len() < end {
            return Err(Bad::Short);
        }
        let payload = &buf[HEADER..end];
        if crc32fast::hash(payload) != crc {
            return Err(Bad::Checksum);
        }
        Ok((payload, end))
    }

    /// Reads one frame from a stream. `Ok(None)` only at a clean end of stream.
    pub(crate) fn read(r: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<Option<()>> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            let n = r.read(&mut header[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(invalid(Bad::Short));
            }
            got += n;
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if len > MAX_LEN {
            return Err(invalid(Bad::TooLong(len)));
        }
        payload.clear();
        payload.resize(len, 0);
        r.read_exact(payload).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(Bad::Short)
            } else {
                e
            }
        })?;
        if crc32fast::hash(payload) != crc {
            return Err(invalid(Bad::Checksum));
        }
        Ok(Some(()))
    }

    fn invalid(bad: Bad) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, bad.to_string())
    }
}
