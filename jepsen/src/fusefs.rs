//! A FUSE filesystem that loses un-fsynced writes, mounted over a node's data directory.
//!
//! Every name operation (create, mkdir, unlink, rmdir, rename, chmod) passes straight through
//! to a real backing directory, so it is "durable" at once. File *data* is different: writes
//! and size changes are kept in memory per inode (sorted extents plus the logical size and the
//! smallest size the file was cut to) and reach the backing file only on `fsync`/`fdatasync`
//! (or at once on an `O_SYNC`/`O_DSYNC` handle). [`PowerSwitch::power_off`] drops every
//! unsynced byte and invalidates every open handle: what a disk without its cache would keep
//! after a power cut. Closing a file does not make its data durable, just as on a real disk.
//!
//! Files are opened with `FOPEN_DIRECT_IO` and attributes are never cached, so the kernel's
//! page cache cannot serve or keep bytes this filesystem has dropped.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;
/// Name under which our mounts appear in /proc/mounts (used to find leftovers).
pub const FS_NAME: &str = "intentd-jepsen";

/// Unsynced state of one file.
#[derive(Debug, Default)]
struct Dirty {
    /// Size the file has for its users.
    size: u64,
    /// Backing bytes at or past this offset are no longer visible (the file was cut).
    cut: u64,
    /// Written bytes not yet synced: non-overlapping, non-adjacent extents by offset.
    extents: BTreeMap<u64, Vec<u8>>,
}

impl Dirty {
    fn new(backing_len: u64) -> Self {
        Dirty {
            size: backing_len,
            cut: backing_len,
            extents: BTreeMap::new(),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Every extent that overlaps or touches [offset, end) is merged into one.
        let touching: Vec<u64> = self
            .extents
            .range(..=end)
            .filter(|(s, v)| *s + v.len() as u64 >= offset)
            .map(|(s, _)| *s)
            .collect();
        let mut start = offset;
        let mut stop = end;
        for s in &touching {
            start = start.min(*s);
            stop = stop.max(s + self.extents[s].len() as u64);
        }
        let mut buf = vec![0u8; (stop - start) as usize];
        for s in touching {
            let old = self.extents.remove(&s).expect("listed above");
            let at = (s - start) as usize;
            buf[at..at + old.len()].copy_from_slice(&old);
        }
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.extents.insert(start, buf);
        self.size = self.size.max(end);
    }

    fn truncate(&mut self, size: u64) {
        self.cut = self.cut.min(size);
        self.size = size;
        let starts: Vec<u64> = self.extents.range(..).map(|(s, _)| *s).collect();
        for s in starts {
            if s >= size {
                self.extents.remove(&s);
            } else if let Some(v) = self.extents.get_mut(&s) {
                if s + v.len() as u64 > size {
                    v.truncate((size - s) as usize);
                }
            }
        }
    }

    /// Reads `[offset, offset+len)` of the logical file: backing bytes below `cut`, zeros
    /// elsewhere, extents on top.
    fn read(&self, backing: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let len = len.min((self.size - offset) as usize);
        let mut buf = vec![0u8; len];
        let end = offset + len as u64;
        let visible_end = end.min(self.cut);
        if visible_end > offset {
            read_at_most(backing, &mut buf[..(visible_end - offset) as usize], offset)?;
        }
        for (s, v) in self.extents.range(..end) {
            let (s, e) = (*s, s + v.len() as u64);
            if e <= offset {
                continue;
            }
            let from = s.max(offset);
            let to = e.min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&v[(from - s) as usize..(to - s) as usize]);
        }
        Ok(buf)
    }

    /// Makes the backing file hold exactly the logical content.
    fn apply(&self, backing: &File) -> std::io::Result<()> {
        let len = backing.metadata()?.len();
        if self.cut < len {
            backing.set_len(self.cut)?;
        }
        for (s, v) in &self.extents {
            backing.write_all_at(v, *s)?;
        }
        if backing.metadata()?.len() != self.size {
            backing.set_len(self.size)?;
        }
        Ok(())
    }
}

/// Fills `buf` from `offset`, leaving zeros past the end of the file.
fn read_at_most(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Handle {
    ino: u64,
    file: File,
    /// O_SYNC / O_DSYNC: every write is durable when it returns.
    sync: bool,
}

#[derive(Default)]
struct State {
    /// ino -> path relative to the backing root ("" is the root).
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    dirty: HashMap<u64, Dirty>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Counters for tests and the run report.
    dropped_bytes: u64,
    power_offs: u64,
}

struct Shared {
    backing: PathBuf,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The filesystem given to fuser.
pub struct LossyFs {
    shared: Arc<Shared>,
}

/// Cuts the power of a [`LossyFs`] from outside its session.
#[derive(Clone)]
pub struct PowerSwitch {
    shared: Arc<Shared>,
}

impl PowerSwitch {
    /// Drops every unsynced write and invalidates every open handle. Call it only after the
    /// process using the filesystem is dead (SIGKILL and reaped).
    pub fn power_off(&self) -> u64 {
        let mut st = self.shared.lock();
        let bytes: u64 = st
            .dirty
            .values()
            .map(|d| d.extents.values().map(|v| v.len() as u64).sum::<u64>())
            .sum();
        st.dirty.clear();
        st.handles.clear();
        st.dropped_bytes += bytes;
        st.power_offs += 1;
        bytes
    }

    /// Bytes written but not (yet) synced.
    pub fn unsynced_bytes(&self) -> u64 {
        let st = self.shared.lock();
        st.dirty
            .values()
            .map(|d| d.extents.values().map(|v| v.len() as u64).sum::<u64>())
            .sum()
    }

    /// Bytes dropped by every power-off so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.shared.lock().dropped_bytes
    }
}

impl LossyFs {
    pub fn new(backing: impl Into<PathBuf>) -> (LossyFs, PowerSwitch) {
        let mut st = State {
            next_ino: ROOT + 1,
            next_fh: 1,
            ..State::default()
        };
        st.paths.insert(ROOT, PathBuf::new());
        st.inos.insert(PathBuf::new(), ROOT);
        let shared = Arc::new(Shared {
            backing: backing.into(),
            state: Mutex::new(st),
        });
        (
            LossyFs {
                shared: Arc::clone(&shared),
            },
            PowerSwitch { shared },
        )
    }

    fn real(&self, rel: &Path) -> PathBuf {
        self.shared.backing.join(rel)
    }

    fn child(st: &State, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let p = st.paths.get(&parent.0).ok_or(Errno::ENOENT)?;
        Ok(p.join(name))
    }

    fn ino_for(st: &mut State, rel: &Path) -> u64 {
        if let Some(i) = st.inos.get(rel) {
            return *i;
        }
        let i = st.next_ino;
        st.next_ino += 1;
        st.paths.insert(i, rel.to_path_buf());
        st.inos.insert(rel.to_path_buf(), i);
        i
    }

    fn forget_path(st: &mut State, rel: &Path) {
        if let Some(i) = st.inos.remove(rel) {
            st.paths.remove(&i);
            // Unsynced data of a file whose name is gone can only be reached through open
            // handles; keep it while one is open.
            if !st.handles.values().any(|h| h.ino == i) {
                st.dirty.remove(&i);
            }
        }
    }

    fn attr(&self, st: &State, ino: u64, rel: &Path) -> Result<FileAttr, Errno> {
        let md = fs::symlink_metadata(self.real(rel)).map_err(Errno::from)?;
        Ok(self.attr_of(st, ino, &md))
    }

    fn attr_of(&self, st: &State, ino: u64, md: &fs::Metadata) -> FileAttr {
        let kind = if md.is_dir() {
            FileType::Directory
        } else if md.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = st.dirty.get(&ino).map_or(md.len(), |d| d.size);
        let t = |s: i64, ns: i64| {
            UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t(md.atime(), md.atime_nsec()),
            mtime: t(md.mtime(), md.mtime_nsec()),
            ctime: t(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn open_backing(&self, rel: &Path, create: Option<u32>) -> std::io::Result<File> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if let Some(mode) = create {
            o.create(true).mode(mode);
        }
        o.open(self.real(rel))
    }

    fn new_handle(st: &mut State, ino: u64, file: File, flags: i32) -> u64 {
        let fh = st.next_fh;
        st.next_fh += 1;
        let sync = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        st.handles.insert(fh, Handle { ino, file, sync });
        fh
    }

    /// Writes an inode's unsynced state through `file`.
    fn sync_inode(st: &mut State, ino: u64, file: &File) -> std::io::Result<()> {
        if let Some(d) = st.dirty.remove(&ino) {
            if let Err(e) = d.apply(file) {
                st.dirty.insert(ino, d);
                return Err(e);
            }
        }
        Ok(())
    }

    fn dirty_entry<'a>(st: &'a mut State, ino: u64, file: &File) -> std::io::Result<&'a mut Dirty> {
        match st.dirty.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                Ok(e.insert(Dirty::new(file.metadata()?.len())))
            }
        }
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.shared.lock();
        let rel = match Self::child(&st, parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let md = match fs::symlink_metadata(self.real(&rel)) {
            Ok(md) => md,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let ino = Self::ino_for(&mut st, &rel);
        reply.entry(&TTL, &self.attr_of(&st, ino, &md), Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.shared.lock();
        // An open file whose name is gone is still reachable through its handle.
        if let Some(h) = st.handles.values().find(|h| h.ino == ino.0) {
            if let Ok(md) = h.file.metadata() {
                return reply.attr(&TTL, &self.attr_of(&st, ino.0, &md));
            }
        }
        let Some(rel) = st.paths.get(&ino.0).cloned() else {
            return reply.error(Errno::ENOENT);
        };
        match self.attr(&st, ino.0, &rel) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.shared.lock();
        let rel = st.paths.get(&ino.0).cloned();
        if let Some(rel) = &rel {
            let real = self.real(rel);
            if let Some(m) = mode {
                if let Err(e) = fs::set_permissions(&real, fs::Permissions::from_mode(m & 0o7777)) {
                    return reply.error(Errno::from(e));
                }
            }
            if uid.is_some() || gid.is_some() {
                if let Err(e) = std::os::unix::fs::chown(&real, uid, gid) {
                    return reply.error(Errno::from(e));
                }
            }
        }
        if let Some(size) = size {
            // The size change is data: it is kept in memory until the next fsync.
            let file = match fh.and_then(|f| st.handles.get(&f.0)) {
                Some(h) => h.file.try_clone(),
                None => match &rel {
                    Some(rel) => self.open_backing(rel, None),
                    None => return reply.error(Errno::ENOENT),
                },
            };
            let file = match file {
                Ok(f) => f,
                Err(e) => return reply.error(Errno::from(e)),
            };
            let sync = fh
                .and_then(|f| st.handles.get(&f.0))
                .is_some_and(|h| h.sync);
            match Self::dirty_entry(&mut st, ino.0, &file) {
                Ok(d) => d.truncate(size),
                Err(e) => return reply.error(Errno::from(e)),
            }
            if sync {
                if let Err(e) = Self::sync_inode(&mut st, ino.0, &file) {
                    return reply.error(Errno::from(e));
                }
            }
            if let Ok(md) = file.metadata() {
                return reply.attr(&TTL, &self.attr_of(&st, ino.0, &md));
            }
        }
        let Some(rel) = rel else {
            return reply.error(Errno::ENOENT);
        };
        match self.attr(&st, ino.0, &rel) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.shared.lock();
        let rel = match Self::child(&st, parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let real = self.real(&rel);
        if let Err(e) = fs::create_dir(&real) {
            return reply.error(Errno::from(e));
        }
        let _ = fs::set_permissions(&real, fs::Permissions::from_mode(mode & 0o7777));
        let ino = Self::ino_for(&mut st, &rel);
        match self.attr(&st, ino, &rel) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.shared.lock();
        let rel = match Self::child(&st, parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        match fs::remove_file(self.real(&rel)) {
            Ok(()) => {
                Self::forget_path(&mut st, &rel);
                reply.ok()
            }
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.shared.lock();
        let rel = match Self::child(&st, parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        match fs::remove_dir(self.real(&rel)) {
            Ok(()) => {
                Self::forget_path(&mut st, &rel);
                reply.ok()
            }
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let mut st = self.shared.lock();
        let (from, to) = match (
            Self::child(&st, parent, name),
            Self::child(&st, newparent, newname),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if let Err(e) = fs::rename(self.real(&from), self.real(&to)) {
            return reply.error(Errno::from(e));
        }
        // The target (if any) is replaced; the source's inode (and its unsynced data, which
        // stays unsynced) moves to the new name, and so do its descendants.
        Self::forget_path(&mut st, &to);
        let moved: Vec<(PathBuf, u64)> = st
            .inos
            .iter()
            .filter(|(p, _)| p.starts_with(&from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, i) in moved {
            let suffix = p.strip_prefix(&from).expect("filtered").to_path_buf();
            let np = if suffix.as_os_str().is_empty() {
                to.clone()
            } else {
                to.join(suffix)
            };
            st.inos.remove(&p);
            st.inos.insert(np.clone(), i);
            st.paths.insert(i, np);
        }
        reply.ok()
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.shared.lock();
        let Some(rel) = st.paths.get(&ino.0).cloned() else {
            return reply.error(Errno::ENOENT);
        };
        let file = match self.open_backing(&rel, None) {
            Ok(f) => f,
            Err(e) => return reply.error(Errno::from(e)),
        };
        if flags.0 & libc::O_TRUNC != 0 {
            match Self::dirty_entry(&mut st, ino.0, &file) {
                Ok(d) => d.truncate(0),
                Err(e) => return reply.error(Errno::from(e)),
            }
        }
        let fh = Self::new_handle(&mut st, ino.0, file, flags.0);
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.shared.lock();
        let rel = match Self::child(&st, parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let real = self.real(&rel);
        if flags & libc::O_EXCL != 0 && real.exists() {
            return reply.error(Errno::EEXIST);
        }
        let file = match self.open_backing(&rel, Some(mode & 0o7777)) {
            Ok(f) => f,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let md = match file.metadata() {
            Ok(md) => md,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let ino = Self::ino_for(&mut st, &rel);
        if flags & libc::O_TRUNC != 0 {
            if let Ok(d) = Self::dirty_entry(&mut st, ino, &file) {
                d.truncate(0);
            }
        }
        let attr = self.attr_of(&st, ino, &md);
        let fh = Self::new_handle(&mut st, ino, file, flags);
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::FOPEN_DIRECT_IO,
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.shared.lock();
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let result = match st.dirty.get(&ino.0) {
            Some(d) => d.read(&h.file, offset, size as usize),
            None => {
                let mut buf = vec![0u8; size as usize];
                let len = h.file.metadata().map(|m| m.len()).unwrap_or(0);
                let n = len.saturating_sub(offset).min(size as u64) as usize;
                buf.truncate(n);
                read_at_most(&h.file, &mut buf, offset).map(|()| buf)
            }
        };
        match result {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.shared.lock();
        let Some(h) = st.handles.get(&fh.0) else {
            // A handle from before a power-off: that process is gone.
            return reply.error(Errno::EBADF);
        };
        let (file, sync) = match h.file.try_clone() {
            Ok(f) => (f, h.sync),
            Err(e) => return reply.error(Errno::from(e)),
        };
        match Self::dirty_entry(&mut st, ino.0, &file) {
            Ok(d) => d.write(offset, data),
            Err(e) => return reply.error(Errno::from(e)),
        }
        if sync {
            if let Err(e) = Self::sync_inode(&mut st, ino.0, &file) {
                return reply.error(Errno::from(e));
            }
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a durability point.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.shared.lock();
        if let Some(h) = st.handles.remove(&fh.0) {
            // Last handle of a file whose name is gone: nothing can reach its data any more.
            let ino = h.ino;
            if !st.paths.contains_key(&ino) && !st.handles.values().any(|o| o.ino == ino) {
                st.dirty.remove(&ino);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.shared.lock();
        let file = match st.handles.get(&fh.0).map(|h| h.file.try_clone()) {
            Some(Ok(f)) => f,
            Some(Err(e)) => return reply.error(Errno::from(e)),
            None => return reply.error(Errno::EBADF),
        };
        match Self::sync_inode(&mut st, ino.0, &file) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = self.shared.lock();
        let Some(rel) = st.paths.get(&ino.0).cloned() else {
            return reply.error(Errno::ENOENT);
        };
        let rd = match fs::read_dir(self.real(&rel)) {
            Ok(rd) => rd,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let mut entries: Vec<(u64, FileType, std::ffi::OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        let mut names: Vec<(std::ffi::OsString, FileType)> = rd
            .filter_map(Result::ok)
            .map(|e| {
                let kind = match e.file_type() {
                    Ok(t) if t.is_dir() => FileType::Directory,
                    Ok(t) if t.is_symlink() => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                (e.file_name(), kind)
            })
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in names {
            let child = rel.join(&name);
            let i = Self::ino_for(&mut st, &child);
            entries.push((i, kind, name));
        }
        for (idx, (i, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), (idx + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable as soon as they change.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path = std::ffi::CString::new(self.shared.backing.as_os_str().as_encoded_bytes())
            .unwrap_or_default();
        // SAFETY: statvfs with a valid C string and a zeroed out-struct.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// A mounted [`LossyFs`]; unmounts on drop.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    pub switch: PowerSwitch,
    pub mountpoint: PathBuf,
}

impl Mount {
    /// Mounts a lossy view of `backing` at `mountpoint` (both are created if absent).
    pub fn start(backing: &Path, mountpoint: &Path) -> anyhow::Result<Mount> {
        fs::create_dir_all(backing)?;
        fs::create_dir_all(mountpoint)?;
        let (fs, switch) = LossyFs::new(backing);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName(FS_NAME.into()),
            fuser::MountOption::Subtype("lossy".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| {
            anyhow::anyhow!("mounting the lossy fs at {}: {e}", mountpoint.display())
        })?;
        Ok(Mount {
            session: Some(session),
            switch,
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    pub fn power_off(&self) -> u64 {
        self.switch.power_off()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if s.umount_and_join().is_err() {
                lazy_unmount(&self.mountpoint);
            }
        }
    }
}

fn lazy_unmount(p: &Path) {
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(p)
        .stderr(std::process::Stdio::null())
        .status();
}

/// Unmounts every mount of this filesystem that a crashed run left behind.
pub fn cleanup_leftover_mounts() {
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let mut parts = line.split_whitespace();
        let (Some(src), Some(target)) = (parts.next(), parts.next()) else {
            continue;
        };
        if src == FS_NAME {
            // /proc/mounts escapes spaces as \040; our paths have none.
            lazy_unmount(Path::new(target));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn extents_merge_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"0123456789").unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut d = Dirty::new(10);
        d.write(8, b"abcd");
        d.write(2, b"XY");
        d.write(3, b"ZZZ");
        assert_eq!(d.read(&f, 0, 100).unwrap(), b"01XZZZ67abcd");
        d.truncate(4);
        d.write(6, b"q");
        assert_eq!(d.read(&f, 0, 100).unwrap(), b"01XZ\0\0q");
        assert_eq!(d.extents.len(), 2);
        d.apply(&f).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"01XZ\0\0q");
    }

    fn fuse_available() -> bool {
        Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0
    }

    #[test]
    fn unsynced_writes_vanish_at_power_off_and_synced_ones_survive() {
        if !fuse_available() {
            eprintln!("skipped: needs root and /dev/fuse");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
        let m = Mount::start(&backing, &mnt).unwrap();

        // Synced: survives.
        let mut a = File::create(mnt.join("synced")).unwrap();
        a.write_all(b"durable").unwrap();
        a.sync_data().unwrap();
        a.write_all(b"+tail").unwrap();
        drop(a);
        // Never synced: only the name survives.
        fs::create_dir(mnt.join("sub")).unwrap();
        let mut b = File::create(mnt.join("sub/lost")).unwrap();
        b.write_all(b"gone").unwrap();
        drop(b);
        // Written, then renamed into place after fsync (the vote-file pattern).
        let mut c = File::create(mnt.join("tmp")).unwrap();
        c.write_all(b"vote").unwrap();
        c.sync_all().unwrap();
        drop(c);
        fs::rename(mnt.join("tmp"), mnt.join("vote")).unwrap();

        // Before the power cut the process sees everything it wrote.
        assert_eq!(fs::read(mnt.join("synced")).unwrap(), b"durable+tail");
        assert_eq!(fs::read(mnt.join("sub/lost")).unwrap(), b"gone");
        assert!(m.switch.unsynced_bytes() > 0);
        assert_eq!(fs::read(backing.join("sub/lost")).unwrap(), b"");

        let dropped = m.power_off();
        assert_eq!(dropped, 9, "'+tail' and 'gone'");
        assert_eq!(fs::read(mnt.join("synced")).unwrap(), b"durable");
        assert_eq!(fs::read(mnt.join("sub/lost")).unwrap(), b"");
        assert_eq!(fs::read(mnt.join("vote")).unwrap(), b"vote");
        assert!(!mnt.join("tmp").exists());

        // Truncation is data too: an unsynced cut is undone by a power-off.
        let f = OpenOptions::new()
            .write(true)
            .open(mnt.join("synced"))
            .unwrap();
        f.set_len(3).unwrap();
        assert_eq!(fs::metadata(mnt.join("synced")).unwrap().len(), 3);
        drop(f);
        m.power_off();
        let mut s = String::new();
        File::open(mnt.join("synced"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "durable");

        // O_DSYNC handles are durable per write; unlink passes through.
        let mut g = OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(mnt.join("dsync"))
            .unwrap();
        g.write_all(b"now").unwrap();
        drop(g);
        m.power_off();
        assert_eq!(fs::read(mnt.join("dsync")).unwrap(), b"now");
        fs::remove_file(mnt.join("dsync")).unwrap();
        assert!(!backing.join("dsync").exists());
        drop(m);
    }
}
