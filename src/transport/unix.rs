//! Unix socket files for servers: replacing a stale one safely, setting permissions, and
//! removing it again on a clean shutdown.
//!
//! A socket file outlives the server that made it when the server is killed. Binding over it
//! fails with "address in use", so servers commonly delete it first — which silently steals
//! the name from a server that is still running. [`prepare_bind`] deletes it only when a
//! connection to it is refused (nothing listens); a live socket is an error, and so is a
//! file that is not a socket at all.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::net::UnixName;

/// Whether something is listening on a socket file.
fn is_live(path: &Path, datagram: bool) -> io::Result<bool> {
    let attempt = if datagram {
        std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.connect(path))
    } else {
        std::os::unix::net::UnixStream::connect(path).map(drop)
    };
    match attempt {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(false),
        // A stream connect to a datagram socket (or the reverse) is a protocol mismatch: it
        // is bound by someone.
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Makes `name` ready to bind: a stale socket file (one nobody listens on) is removed; a live
/// one is an `AddrInUse` error, a file that is not a socket an `AlreadyExists` error.
/// Abstract names have no file and need nothing. `datagram`: the server binds a datagram
/// socket (which is how liveness is probed).
pub fn prepare_bind(name: &UnixName, datagram: bool) -> io::Result<()> {
    let UnixName::Path(path) = name else {
        return Ok(());
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket (not removed)",
                path.display()
            ),
        ));
    }
    if is_live(path, datagram)? {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is already in use: a server is listening on it",
                path.display()
            ),
        ));
    }
    std::fs::remove_file(path)?;
    info!("removed stale socket file {}", path.display());
    Ok(())
}

/// Sets a socket file's permission bits (`--mode 0660`).
pub fn set_mode(name: &UnixName, mode: u32) -> io::Result<()> {
    match name {
        UnixName::Path(path) => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        }
        UnixName::Abstract(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an abstract socket has no file to set a mode on",
        )),
    }
}

/// Removes the socket file a server bound when dropped — only if the file is still the one
/// it bound (same device and inode), so a successor's socket is never deleted.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl SocketFile {
    /// Remembers the file just bound at `name` (nothing for an abstract name).
    pub fn bound(name: &UnixName) -> Option<SocketFile> {
        let UnixName::Path(path) = name else {
            return None;
        };
        let id = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Some(SocketFile {
            path: path.clone(),
            id,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let now = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_none() || now != self.id {
            debug!(
                "socket file {} gone or replaced: left alone",
                self.path.display()
            );
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => debug!("removed socket file {}", self.path.display()),
            Err(e) => warn!("cannot remove socket file {}: {e}", self.path.display()),
        }
    }
}

/// Parses an octal permission mode (`0660`, `660`, `0o660`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "'{s}' is not an octal file mode (like 0660 or 600)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o777"), Ok(0o777));
        for bad in ["", "8", "0x1", "77777", "rw"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stale_sockets_go_live_ones_and_other_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let name = UnixName::Path(path.clone());
        prepare_bind(&name, false).unwrap();

        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = prepare_bind(&name, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains("already in use"), "{e}");
        drop(live);
        assert!(path.exists(), "closing a listener leaves its file behind");
        prepare_bind(&name, false).unwrap();
        assert!(!path.exists(), "the stale file is removed");

        std::fs::write(&path, b"data").unwrap();
        let e = prepare_bind(&name, false).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert!(path.exists());

        let gram = dir.path().join("g.sock");
        let bound = std::os::unix::net::UnixDatagram::bind(&gram).unwrap();
        let e = prepare_bind(&UnixName::Path(gram.clone()), true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(bound);
        prepare_bind(&UnixName::Path(gram.clone()), true).unwrap();
        assert!(!gram.exists());
    }

    #[test]
    fn the_socket_file_is_removed_only_if_it_is_still_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let name = UnixName::Path(path.clone());
        let first = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let guard = SocketFile::bound(&name).unwrap();
        drop(guard);
        assert!(!path.exists());
        drop(first);

        let _old = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let guard = SocketFile::bound(&name).unwrap();
        std::fs::remove_file(&path).unwrap();
        let _new = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(guard);
        assert!(path.exists(), "a successor's socket is left alone");
    }
}
