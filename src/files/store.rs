//! The served directory, reached only through file descriptors: every component of a name is
//! opened with `openat(O_NOFOLLOW)` from the directory above it, so no symlink (one that already
//! sits inside the directory, or one swapped in during a transfer) can lead a read or a write
//! outside. Uploads go to a hidden partial file beside their target and are renamed into place
//! only when complete and verified.
//!
//! Everything here blocks: callers run it on blocking threads.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::files::name::{FileName, RESERVED_PREFIX};

/// Prefix of partial (unfinished) uploads.
pub const PARTIAL_PREFIX: &str = ".sockit-part-";
/// Deepest directory tree `list` descends.
pub const MAX_DEPTH: usize = 64;

/// Why a store operation failed; the text is sent to the peer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No such file.
    #[error("{0}: no such file")]
    NotFound(String),
    /// A directory, device, socket or fifo where a regular file was wanted.
    #[error("{0}: not a regular file")]
    NotAFile(String),
    /// A symlink on the way: never followed.
    #[error("{0}: is a symbolic link, which is never followed")]
    Symlink(String),
    /// A component that should be a directory is not one.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// The target exists and overwriting is off.
    #[error("{0}: already exists (the server does not overwrite without --overwrite)")]
    Exists(String),
    /// Not enough free space for the rest of the upload.
    #[error("not enough free space: {need} bytes needed, {available} available")]
    NoSpace {
        /// Bytes the rest of the upload needs.
        need: u64,
        /// Bytes free for unprivileged users.
        available: u64,
    },
    /// Any other system error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// The system error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io {
        what: what.into(),
        source,
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and `dir` is an open descriptor for the whole call; a
    // successful return is a new descriptor that nothing else owns.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: see above: the descriptor is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name, and a pointer to a live `stat`.
    let ret = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match check(ret) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn kind(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

fn mtime_of(st: &libc::stat) -> SystemTime {
    let secs = Duration::from_secs(st.st_mtime.max(0) as u64);
    UNIX_EPOCH + secs + Duration::from_nanos(st.st_mtime_nsec.clamp(0, 999_999_999) as u64)
}

/// Size and modification time of a stored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Bytes.
    pub size: u64,
    /// Last modification.
    pub mtime: SystemTime,
}

/// One regular file found by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the served directory, `/`-separated.
    pub name: String,
    /// Size and modification time.
    pub info: FileInfo,
}

/// The served directory.
#[derive(Debug)]
pub struct Store {
    root: OwnedFd,
    path: PathBuf,
}

impl Store {
    /// Opens `path`, which must be an existing directory.
    pub fn open(path: &Path) -> io::Result<Store> {
        let file = File::open(path)?;
        if !file.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(Store {
            root: file.into(),
            path: path.to_owned(),
        })
    }

    /// The directory as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory holding `name`'s last component, creating missing directories when
    /// `create` is set; refuses symlinks and non-directories on the way.
    fn parent_of(&self, name: &FileName, create: bool) -> Result<OwnedFd, StoreError> {
        let (dirs, _) = name.split_last();
        let mut current = self
            .root
            .try_clone()
            .map_err(io_err("cannot open the directory"))?;
        let mut walked = String::new();
        for comp in dirs {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(comp);
            let c = cstring(comp).map_err(io_err(walked.clone()))?;
            let flags = libc::O_RDONLY | libc::O_DIRECTORY;
            current = match openat(current.as_fd(), &c, flags, 0) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    // SAFETY: valid descriptor and NUL-terminated name.
                    let made =
                        check(unsafe { libc::mkdirat(current.as_raw_fd(), c.as_ptr(), 0o755) });
                    match made {
                        Ok(_) => {}
                        // Made by a concurrent upload of a sibling: fine.
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(io_err(format!("cannot create {walked}"))(e)),
                    }
                    openat(current.as_fd(), &c, flags, 0)
                        .map_err(|e| dir_error(&current, &c, &walked, e))?
                }
                Err(e) => return Err(dir_error(&current, &c, &walked, e)),
            };
        }
        Ok(current)
    }

    /// Size and modification time of `name`, if it exists as a regular file.
    pub fn stat(&self, name: &FileName) -> Result<Option<FileInfo>, StoreError> {
        let dir = match self.parent_of(name, false) {
            Ok(dir) => dir,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (_, last) = name.split_last();
        let c = cstring(last).map_err(io_err(name.as_str()))?;
        match fstatat(dir.as_fd(), &c).map_err(io_err(name.as_str()))? {
            None => Ok(None),
            Some(st) if kind(&st) == libc::S_IFREG => Ok(Some(FileInfo {
                size: st.st_size.max(0) as u64,
                mtime: mtime_of(&st),
            })),
            Some(st) if kind(&st) == libc::S_IFLNK => Err(StoreError::Symlink(name.to_string())),
            Some(_) => Err(StoreError::NotAFile(name.to_string())),
        }
    }

    /// Opens `name` for reading: a regular file reached without following any symlink.
    pub fn open_file(&self, name: &FileName) -> Result<(File, FileInfo), StoreError> {
        let dir = self.parent_of(name, false)?;
        let (_, last) = name.split_last();
        let c = cstring(last).map_err(io_err(name.as_str()))?;
        // O_NONBLOCK: opening a fifo must not hang; it is refused just below anyway.
        let fd = openat(dir.as_fd(), &c, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .map_err(|e| file_error(&dir, &c, name.as_str(), e))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(io_err(name.as_str()))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile(name.to_string()));
        }
        // Regular files ignore O_NONBLOCK, but clear it for clarity of later reads.
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) };
        let info = FileInfo {
            size: meta.len(),
            mtime: meta.modified().unwrap_or(UNIX_EPOCH),
        };
        Ok((file, info))
    }

    /// Starts (or continues) an upload of `size` bytes to `name`: checks the target, opens the
    /// partial file that belongs to this name, size and `identity` (the announced hash, if any),
    /// and checks the free space for what is still missing.
    pub fn begin(
        &self,
        name: &FileName,
        size: u64,
        identity: Option<&str>,
        overwrite: bool,
    ) -> Result<Partial, StoreError> {
        let dir = self.parent_of(name, true)?;
        let (_, last) = name.split_last();
        let target = cstring(last).map_err(io_err(name.as_str()))?;
        match fstatat(dir.as_fd(), &target).map_err(io_err(name.as_str()))? {
            None => {}
            Some(st) if kind(&st) == libc::S_IFLNK => {
                return Err(StoreError::Symlink(name.to_string()));
            }
            Some(st) if kind(&st) != libc::S_IFREG => {
                return Err(StoreError::NotAFile(name.to_string()));
            }
            Some(_) if !overwrite => return Err(StoreError::Exists(name.to_string())),
            Some(_) => {}
        }
        let part_name = partial_name(last, size, identity);
        let part = cstring(&part_name).map_err(io_err(name.as_str()))?;
        let fd = openat(dir.as_fd(), &part, libc::O_RDWR | libc::O_CREAT, 0o644)
            .map_err(io_err(format!("cannot create the partial file for {name}")))?;
        let file = File::from(fd);
        let mut len = file.metadata().map_err(io_err(name.as_str()))?.len();
        if len > size {
            file.set_len(0).map_err(io_err(name.as_str()))?;
            len = 0;
        }
        let partial = Partial {
            dir,
            part,
            target,
            name: name.to_string(),
            file,
            len,
        };
        let need = size - len;
        let available = partial
            .free_space()
            .map_err(io_err("cannot read the free space"))?;
        if need > available {
            let empty = len == 0;
            if empty {
                partial.discard();
            }
            return Err(StoreError::NoSpace { need, available });
        }
        Ok(partial)
    }

    /// Walks the tree and calls `found` for every regular file, never following symlinks and
    /// skipping partial uploads; stops early when `found` returns false. Returns the count.
    pub fn list(&self, mut found: impl FnMut(Entry) -> bool) -> Result<u64, StoreError> {
        let root = self
            .root
            .try_clone()
            .map_err(io_err("cannot open the directory"))?;
        let mut stack = vec![(root, String::new(), 0usize)];
        let mut count = 0;
        while let Some((dir, prefix, depth)) = stack.pop() {
            let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
            let entries = match std::fs::read_dir(&listing) {
                Ok(entries) => entries,
                Err(e) if prefix.is_empty() => {
                    return Err(io_err("cannot list the directory")(e));
                }
                Err(e) => {
                    tracing::debug!("cannot list {prefix}: {e}");
                    continue;
                }
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(name) = file_name.to_str() else {
                    tracing::debug!("skipping a name that is not UTF-8 in '{prefix}'");
                    continue;
                };
                if name.starts_with(RESERVED_PREFIX) {
                    continue;
                }
                let Ok(c) = cstring(name) else { continue };
                let Ok(Some(st)) = fstatat(dir.as_fd(), &c) else {
                    continue;
                };
                let path = if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}/{name}")
                };
                match kind(&st) {
                    libc::S_IFREG => {
                        count += 1;
                        let info = FileInfo {
                            size: st.st_size.max(0) as u64,
                            mtime: mtime_of(&st),
                        };
                        if !found(Entry { name: path, info }) {
                            return Ok(count);
                        }
                    }
                    libc::S_IFDIR if depth + 1 < MAX_DEPTH => {
                        if let Ok(sub) =
                            openat(dir.as_fd(), &c, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                        {
                            stack.push((sub, path, depth + 1));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(count)
    }

    /// Removes partial uploads last written more than `ttl` ago, skipping those `busy` says are
    /// in use. Returns how many were removed.
    pub fn clean_partials(&self, ttl: Duration, busy: impl Fn(&str) -> bool) -> usize {
        let Ok(root) = self.root.try_clone() else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        let mut stack = vec![(root, 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
            let Ok(entries) = std::fs::read_dir(&listing) else {
                continue;
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(name) = file_name.to_str() else {
                    continue;
                };
                let Ok(c) = cstring(name) else { continue };
                let Ok(Some(st)) = fstatat(dir.as_fd(), &c) else {
                    continue;
                };
                if kind(&st) == libc::S_IFDIR && depth + 1 < MAX_DEPTH {
                    if let Ok(sub) = openat(dir.as_fd(), &c, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    {
                        stack.push((sub, depth + 1));
                    }
                    continue;
                }
                if kind(&st) != libc::S_IFREG || !name.starts_with(PARTIAL_PREFIX) || busy(name) {
                    continue;
                }
                let age = now.duration_since(mtime_of(&st)).unwrap_or_default();
                // SAFETY: valid descriptor and NUL-terminated name.
                if age >= ttl && unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } == 0 {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// The hidden name of the partial upload of `last` with this size and announced hash.
pub fn partial_name(last: &str, size: u64, identity: Option<&str>) -> String {
    let mut h = blake3::Hasher::new();
    h.update(last.as_bytes());
    h.update(&[0]);
    h.update(&size.to_le_bytes());
    h.update(identity.unwrap_or("").as_bytes());
    let hex = h.finalize().to_hex();
    format!("{PARTIAL_PREFIX}{}", &hex[..24])
}

fn dir_error(parent: &OwnedFd, c: &CStr, walked: &str, e: io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => StoreError::NotFound(walked.to_owned()),
        Some(libc::ELOOP) => StoreError::Symlink(walked.to_owned()),
        Some(libc::ENOTDIR) => match fstatat(parent.as_fd(), c) {
            Ok(Some(st)) if kind(&st) == libc::S_IFLNK => StoreError::Symlink(walked.to_owned()),
            _ => StoreError::NotADirectory(walked.to_owned()),
        },
        _ => io_err(walked.to_owned())(e),
    }
}

fn file_error(parent: &OwnedFd, c: &CStr, name: &str, e: io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => StoreError::NotFound(name.to_owned()),
        Some(libc::ELOOP) => StoreError::Symlink(name.to_owned()),
        Some(libc::EISDIR) | Some(libc::ENXIO) => StoreError::NotAFile(name.to_owned()),
        _ => match fstatat(parent.as_fd(), c) {
            Ok(Some(st)) if kind(&st) == libc::S_IFLNK => StoreError::Symlink(name.to_owned()),
            _ => io_err(name.to_owned())(e),
        },
    }
}

/// An upload in progress: the partial file and where it goes when complete.
#[derive(Debug)]
pub struct Partial {
    dir: OwnedFd,
    part: CString,
    target: CString,
    name: String,
    /// The partial file, open for reading and writing.
    pub file: File,
    /// Bytes already in the partial file when the upload began.
    pub len: u64,
}

impl Partial {
    /// The partial file's hidden name (the key for "is this one busy").
    pub fn part_name(&self) -> &str {
        self.part.to_str().unwrap_or_default()
    }

    /// Bytes available to unprivileged users on the file system of the target.
    fn free_space(&self) -> io::Result<u64> {
        // SAFETY: an all-zero `statvfs` is a valid value of this plain C struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and a pointer to a live struct.
        check(unsafe { libc::fstatvfs(self.dir.as_raw_fd(), &mut st) })?;
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }

    /// Sets the modification time, then renames the (already synced) partial file onto its
    /// target and syncs the directory. Without `overwrite` the rename fails if the target
    /// appeared meanwhile: a concurrent upload that finished first wins, and this one is
    /// removed.
    pub fn commit(self, overwrite: bool, mtime: Option<SystemTime>) -> Result<(), StoreError> {
        if let Some(mtime) = mtime.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            let t = libc::timespec {
                tv_sec: mtime.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(mtime.subsec_nanos() as i32),
            };
            let times = [t, t];
            // SAFETY: valid descriptor and a pointer to two timespecs.
            unsafe { libc::futimens(self.file.as_raw_fd(), times.as_ptr()) };
        }
        let flags = if overwrite { 0 } else { libc::RENAME_NOREPLACE };
        // SAFETY: valid descriptors and NUL-terminated names.
        let ret = unsafe {
            libc::renameat2(
                self.dir.as_raw_fd(),
                self.part.as_ptr(),
                self.dir.as_raw_fd(),
                self.target.as_ptr(),
                flags,
            )
        };
        if let Err(e) = check(ret) {
            let exists = e.raw_os_error() == Some(libc::EEXIST);
            let name = self.name.clone();
            self.discard();
            return Err(if exists {
                StoreError::Exists(name)
            } else {
                io_err(format!("cannot move {name} into place"))(e)
            });
        }
        // SAFETY: fsync on a descriptor we own.
        check(unsafe { libc::fsync(self.dir.as_raw_fd()) })
            .map_err(io_err("cannot sync the directory"))?;
        Ok(())
    }

    /// Removes the partial file.
    pub fn discard(self) {
        // SAFETY: valid descriptor and NUL-terminated name.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.part.as_ptr(), 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn name(s: &str) -> FileName {
        FileName::parse(s, true).unwrap()
    }

    fn listed(store: &Store) -> Vec<String> {
        let mut seen = vec![];
        store
            .list(|e| {
                seen.push(e.name);
                true
            })
            .unwrap();
        seen
    }

    #[test]
    fn a_symlink_inside_the_directory_is_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("s")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            store.open_file(&name("out/secret")),
            Err(StoreError::Symlink(_))
        ));
        assert!(matches!(
            store.open_file(&name("s")),
            Err(StoreError::Symlink(_))
        ));
        assert!(matches!(
            store.begin(&name("out/new"), 1, None, false),
            Err(StoreError::Symlink(_))
        ));
        assert!(matches!(
            store.begin(&name("s"), 1, None, true),
            Err(StoreError::Symlink(_))
        ));
        assert!(!outside.path().join("new").exists());
        assert!(listed(&store).is_empty());
    }

    #[test]
    fn an_upload_is_invisible_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut p = store.begin(&name("d/e/f.txt"), 5, None, false).unwrap();
        p.file.write_all(b"hello").unwrap();
        assert!(listed(&store).is_empty());
        assert!(store.stat(&name("d/e/f.txt")).unwrap().is_none());
        p.commit(false, None).unwrap();
        assert_eq!(listed(&store), ["d/e/f.txt"]);
        assert!(matches!(
            store.begin(&name("d/e/f.txt"), 5, None, false),
            Err(StoreError::Exists(_))
        ));
    }

    #[test]
    fn a_partial_is_found_again_for_the_same_name_and_size_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut p = store.begin(&name("a"), 10, None, false).unwrap();
        p.file.write_all(b"abc").unwrap();
        drop(p);
        assert_eq!(store.begin(&name("a"), 10, None, false).unwrap().len, 3);
        assert_eq!(store.begin(&name("a"), 11, None, false).unwrap().len, 0);
        assert_eq!(
            store.begin(&name("a"), 10, Some("ff"), false).unwrap().len,
            0
        );
    }

    #[test]
    fn old_partials_are_cleaned_and_busy_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.begin(&name("a"), 10, None, false).unwrap();
        let b = store.begin(&name("x/b"), 10, None, false).unwrap();
        let busy = a.part_name().to_owned();
        assert_eq!(
            store.clean_partials(Duration::from_secs(3600), |_| false),
            0
        );
        assert_eq!(store.clean_partials(Duration::ZERO, |n| n == busy), 1);
        drop(b);
        assert_eq!(store.begin(&name("a"), 10, None, false).unwrap().len, 0);
    }
}
