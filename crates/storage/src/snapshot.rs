//! The snapshot file format and the snapshot directory.
//!
//! A snapshot file is, in order:
//! 1. the 8 bytes `ISNAP001`;
//! 2. one frame (see `fsutil::frame`) holding the `SnapshotMeta` as JSON;
//! 3. one frame per state machine key/value: `0x01, key len (u32 LE), key, value`;
//! 4. one end frame: `0x02, record count (u64 LE)`, and then the end of the file.
//!
//! Every frame is checksummed and the end frame counts the records, so a snapshot cut short
//! in transfer or on disk is refused instead of installed. It is written and read as a
//! stream: memory stays bounded by one record whatever the size of the state.
//!
//! Files are named `<term:020>-<index:020>-<seq:020>.snap` where `seq` is a local counter, so
//! the newest is the greatest (index, seq). They are written as `*.snap.tmp`, fsynced,
//! renamed and the directory fsynced: a `.snap` file is always complete and durable.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use openraft::{BasicNode, SnapshotMeta};

use crate::fsutil::frame;
use crate::StorageError;

pub(crate) type Meta = SnapshotMeta<u64, BasicNode>;
type KeyValue = (Vec<u8>, Vec<u8>);

const MAGIC: &[u8; 8] = b"ISNAP001";
const KV: u8 = 1;
const END: u8 = 2;

// A snapshot file is `write_header`, any number of `write_record`s, then `finish`.

/// The magic and the meta frame that open every snapshot file.
pub(crate) fn write_header<W: Write>(w: &mut W, meta: &Meta) -> Result<(), StorageError> {
    let mut buf = Vec::new();
    w.write_all(MAGIC)?;
    frame::encode_into(&mut buf, &serde_json::to_vec(meta)?);
    w.write_all(&buf)?;
    Ok(())
}

/// One key/value record; `buf` is scratch space reused between calls.
pub(crate) fn write_record<W: Write>(
    w: &mut W,
    buf: &mut Vec<u8>,
    key: &[u8],
    value: &[u8],
) -> Result<(), StorageError> {
    let mut payload = Vec::with_capacity(1 + 4 + key.len() + value.len());
    payload.push(KV);
    payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
    payload.extend_from_slice(key);
    payload.extend_from_slice(value);
    buf.clear();
    frame::encode_into(buf, &payload);
    w.write_all(buf)?;
    Ok(())
}

/// The trailer with the record count, which a reader checks to know the file is whole.
pub(crate) fn finish<W: Write>(
    w: &mut W,
    buf: &mut Vec<u8>,
    count: u64,
) -> Result<(), StorageError> {
    let mut payload = Vec::with_capacity(9);
    payload.push(END);
    payload.extend_from_slice(&count.to_le_bytes());
    buf.clear();
    frame::encode_into(buf, &payload);
    w.write_all(buf)?;
    Ok(())
}

/// Reads a snapshot as a stream of key/values, checking every frame, the record count and
/// that nothing follows the end frame.
pub(crate) struct Reader<R> {
    r: R,
    path: PathBuf,
    payload: Vec<u8>,
    count: u64,
    finished: bool,
}

impl<R: Read> Reader<R> {
    /// Reads the magic and the meta. `path` only names the source in errors.
    pub(crate) fn new(mut r: R, path: &Path) -> Result<(Meta, Reader<R>), StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason,
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|e| corrupt(format!("no snapshot header: {e}")))?;
        if &magic != MAGIC {
            return Err(corrupt("not an intentd snapshot".into()));
        }
        let mut payload = Vec::new();
        match frame::read(&mut r, &mut payload) {
            Ok(Some(())) => {}
            Ok(None) => return Err(corrupt("no snapshot meta".into())),
            Err(e) => return Err(corrupt(format!("snapshot meta: {e}"))),
        }
        let meta: Meta =
            serde_json::from_slice(&payload).map_err(|e| corrupt(format!("snapshot meta: {e}")))?;
        Ok((
            meta,
            Reader {
                r,
                path: path.to_path_buf(),
                payload,
                count: 0,
                finished: false,
            },
        ))
    }

    fn corrupt(&self, reason: String) -> StorageError {
        StorageError::Corrupt {
            path: self.path.clone(),
            offset: self.count,
            reason: format!("after record {}: {reason}", self.count),
        }
    }

    fn next_record(&mut self) -> Result<Option<KeyValue>, StorageError> {
        if self.finished {
            return Ok(None);
        }
        match frame::read(&mut self.r, &mut self.payload) {
            Ok(Some(())) => {}
            Ok(None) => return Err(self.corrupt("snapshot ends without its end record".into())),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(self.corrupt(e.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
        let p = &self.payload;
        match p.first() {
            Some(&KV) if p.len() >= 5 => {
                let klen = u32::from_le_bytes(p[1..5].try_into().expect("4 bytes")) as usize;
                if p.len() < 5 + klen {
                    return Err(self.corrupt("key longer than its record".into()));
                }
                self.count += 1;
                Ok(Some((p[5..5 + klen].to_vec(), p[5 + klen..].to_vec())))
            }
            Some(&END) if p.len() == 9 => {
                let n = u64::from_le_bytes(p[1..9].try_into().expect("8 bytes"));
                if n != self.count {
                    return Err(self.corrupt(format!("end record counts {n} records")));
                }
                let mut extra = [0u8; 1];
                if self.r.read(&mut extra)? != 0 {
                    return Err(self.corrupt("bytes after the end record".into()));
                }
                self.finished = true;
                Ok(None)
            }
            _ => Err(self.corrupt("unknown record".into())),
        }
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<KeyValue, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_record() {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => None,
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads a whole snapshot file to check it; returns its meta.
pub(crate) fn verify(path: &Path) -> Result<Meta, StorageError> {
    let (meta, reader) = Reader::new(BufReader::new(File::open(path)?), path)?;
    for rec in reader {
        rec?;
    }
    Ok(meta)
}

/// Identifies a snapshot file by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapFile {
    pub(crate) index: u64,
    pub(crate) seq: u64,
    pub(crate) path: PathBuf,
}

pub(crate) fn file_name(meta: &Meta, seq: u64) -> String {
    let (term, index) = meta
        .last_log_id
        .map_or((0, 0), |l| (l.leader_id.term, l.index));
    format!("{term:020}-{index:020}-{seq:020}.snap")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".snap")?;
    let mut parts = stem.split('-');
    let _term: u64 = parts.next()?.parse().ok()?;
    let index: u64 = parts.next()?.parse().ok()?;
    let seq: u64 = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((index, seq))
}

/// The complete snapshot files in `dir`, oldest first. With `clean`, leftover temp files of an
/// interrupted build or receive are removed (only safe at open: they were never acknowledged
/// to anyone, but at run time one may be in the making).
pub(crate) fn list(dir: &Path, clean: bool) -> Result<Vec<SnapFile>, StorageError> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if clean && name.ends_with(".tmp") {
            tracing::info!(file = name, "removing an unfinished snapshot file");
            fs::remove_file(ent.path())?;
            continue;
        }
        if let Some((index, seq)) = parse_name(name) {
            out.push(SnapFile {
                index,
                seq,
                path: ent.path(),
            });
        }
    }
    out.sort_by_key(|s| (s.index, s.seq));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    use super::*;

    fn valid_snapshot() -> Vec<u8> {
        let meta = Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "2-9-1".into(),
        };
        let mut out = Vec::new();
        let mut buf = Vec::new();
        write_header(&mut out, &meta).unwrap();
        write_record(&mut out, &mut buf, b"iabc", b"{}").unwrap();
        write_record(&mut out, &mut buf, b"nintents", &1u64.to_be_bytes()).unwrap();
        finish(&mut out, &mut buf, 2).unwrap();
        out
    }

    fn read_all(bytes: &[u8]) -> Result<usize, StorageError> {
        let (_, reader) = Reader::new(bytes, Path::new("fuzz.snap"))?;
        let mut n = 0;
        for record in reader {
            record?;
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn a_valid_snapshot_reads_back_and_a_cut_one_is_refused() {
        let bytes = valid_snapshot();
        assert_eq!(read_all(&bytes).unwrap(), 2);
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// A snapshot arrives from another node (or from a damaged disk): the reader refuses
    /// whatever is not a whole, checksummed snapshot and never panics.
    #[test]
    fn fuzz_snapshot_file() {
        intentd_fuzz::fuzz("snapshot_file", vec![valid_snapshot()], |bytes| {
            let _ = read_all(bytes);
        });
    }

    /// The same behind valid checksums: the input is the frames' payloads, separated by
    /// `0xFE 0xFE`, framed here so that mutations reach the record decoding.
    #[test]
    fn fuzz_snapshot_records() {
        let seed = {
            let bytes = valid_snapshot();
            let mut off = MAGIC.len();
            let mut parts = Vec::new();
            while off < bytes.len() {
                let (payload, len) = frame::decode(&bytes[off..]).unwrap();
                parts.push(payload.to_vec());
                off += len;
            }
            parts.join(&[0xFE, 0xFE][..])
        };
        intentd_fuzz::fuzz("snapshot_records", vec![seed], |bytes| {
            let mut file = MAGIC.to_vec();
            for part in bytes.split(|b| *b == 0xFE).filter(|p| !p.is_empty()) {
                frame::encode_into(&mut file, part);
            }
            let _ = read_all(&file);
        });
    }
}
