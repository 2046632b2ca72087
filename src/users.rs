//! The users file behind `sockit serve --login`: one `name:hash` per line, where the hash is an
//! Argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`). `#` comments and blank
//! lines are allowed. This module parses and checks the file, verifies passwords against it,
//! and edits it for `sockit user add|del|list`.
//!
//! Edits keep every other line (comments included) as it was and replace the file atomically:
//! the new contents go to a temporary file in the same directory, mode 0600, which is synced
//! and then renamed over the old one, so a reader (or a server reloading on SIGHUP) sees either
//! the old file or the new one, never half of one. Concurrent editors are serialised by an
//! advisory lock on the directory.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Argon2, Params, PasswordHash};

/// Longest user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest password `sockit user add` accepts, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 4096;
/// Largest users file read, in bytes: far more than any real one, small enough that a wrong
/// path (a disk image) fails quickly instead of filling memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Largest Argon2 memory cost accepted from the file, in KiB (256 MiB). Each verification
/// allocates this much; the server runs only a few at once, so this bounds their memory.
pub const MAX_M_COST: u32 = 256 * 1024;
/// Largest Argon2 time cost (passes) accepted from the file.
pub const MAX_T_COST: u32 = 64;
/// Largest Argon2 parallelism accepted from the file.
pub const MAX_P_COST: u32 = 16;

/// What can go wrong with a users file or a user name.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file (or its directory).
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A line of the file is not a valid entry.
    #[error("{}:{line}: {why}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{}: larger than {} MiB, not a users file", path.display(), MAX_FILE_BYTES >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A user name that cannot be stored.
    #[error("invalid user name '{name}': {why}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// An empty password.
    #[error("empty password refused")]
    EmptyPassword,
    /// A password longer than [`MAX_PASSWORD_BYTES`].
    #[error("password longer than {MAX_PASSWORD_BYTES} bytes refused")]
    LongPassword,
    /// `del` of a user the file does not have.
    #[error("no user '{name}' in {}", path.display())]
    NoSuchUser {
        /// The name asked for.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// Hashing failed (the system's random source, or parameters out of range).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Checks a user name: 1-32 printable characters, no whitespace, no colon.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    let chars = name.chars().count();
    if chars == 0 {
        Err("it is empty")
    } else if chars > MAX_NAME_CHARS {
        Err("it is longer than 32 characters")
    } else if name.contains(':') {
        Err("it contains a colon")
    } else if name.chars().any(char::is_whitespace) {
        Err("it contains a space")
    } else if name.chars().any(char::is_control) {
        Err("it contains a control character")
    } else {
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), UsersError> {
    validate_name(name).map_err(|why| UsersError::BadName {
        name: name.to_owned(),
        why,
    })
}

/// One user: the name and the parsed hash.
#[derive(Debug, Clone)]
struct Entry {
    name: Arc<str>,
    hash: PasswordHash,
}

/// The parsed users file: names in file order, and each one's password hash.
#[derive(Debug, Default)]
pub struct UserTable {
    entries: Vec<Entry>,
    by_name: HashMap<Arc<str>, usize>,
    /// The line number of each entry, for the duplicate-name error.
    line_of: Vec<usize>,
    /// What unknown names are verified against, so that they cost as much as known ones.
    dummy: OnceLock<Option<PasswordHash>>,
}

/// What a line of the file is, once checked.
enum Line<'a> {
    /// Blank or a comment.
    Other,
    /// `name:hash`.
    User { name: &'a str, hash: &'a str },
}

/// Classifies one line (without its ending); errors say what is wrong, for `FILE:LINE: why`.
fn classify(line: &str) -> Result<Line<'_>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Line::Other);
    }
    let Some((name, hash)) = line.split_once(':') else {
        return Err("expected name:hash (no colon)".into());
    };
    validate_name(name).map_err(|why| format!("invalid user name '{name}': {why}"))?;
    if hash.is_empty() {
        return Err(format!("user '{name}' has no password hash"));
    }
    Ok(Line::User { name, hash })
}

/// Parses a PHC string and checks that it is an Argon2id hash with parameters in range.
fn parse_hash(hash: &str) -> Result<PasswordHash, String> {
    let parsed =
        PasswordHash::new(hash).map_err(|e| format!("not a PHC password hash string ({e})"))?;
    if parsed.algorithm.as_str() != argon2::ARGON2ID_IDENT.as_str() {
        return Err(format!(
            "hash algorithm is {}, expected argon2id",
            parsed.algorithm
        ));
    }
    let params = Params::try_from(&parsed).map_err(|e| format!("bad argon2 parameters ({e})"))?;
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "argon2 parameters too costly (at most m={MAX_M_COST}, t={MAX_T_COST}, \
             p={MAX_P_COST})"
        ));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("hash string lacks its salt or hash".into());
    }
    Ok(parsed)
}

impl UserTable {
    /// Parses the text of a users file; `path` only names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<UserTable, UsersError> {
        let malformed = |line: usize, why: String| UsersError::Malformed {
            path: path.to_owned(),
            line,
            why,
        };
        let mut table = UserTable::default();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let number = i + 1;
            let text = std::str::from_utf8(raw)
                .map_err(|_| malformed(number, "not valid UTF-8".into()))?;
            let Line::User { name, hash } = classify(text).map_err(|why| malformed(number, why))?
            else {
                continue;
            };
            if let Some(&first) = table.by_name.get(name) {
                return Err(malformed(
                    number,
                    format!(
                        "user '{name}' appears twice (first at line {})",
                        table.line_of[first]
                    ),
                ));
            }
            let hash = parse_hash(hash)
                .map_err(|why| malformed(number, format!("user '{name}': {why}")))?;
            let name: Arc<str> = Arc::from(name);
            table.by_name.insert(name.clone(), table.entries.len());
            table.entries.push(Entry { name, hash });
            table.line_of.push(number);
        }
        Ok(table)
    }

    /// Reads and parses a users file.
    pub fn load(path: &Path) -> Result<UserTable, UsersError> {
        let bytes = read_bounded(path)?;
        UserTable::parse(&bytes, path)
    }

    /// The user names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| &*e.name)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `name` is a user.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The hash unknown names are checked against: the same algorithm and cost as the first
    /// user's (which `sockit user add` gives everyone), with a fixed salt. Made on first use;
    /// call this once after loading so that the first unknown name does not pay for it.
    pub fn prepare_dummy(&self) {
        self.dummy();
    }

    fn dummy(&self) -> Option<&PasswordHash> {
        self.dummy
            .get_or_init(|| {
                let params = self
                    .entries
                    .first()
                    .and_then(|e| Params::try_from(&e.hash).ok())
                    .unwrap_or_default();
                let argon =
                    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                argon
                    .hash_password_with_salt(b"no such user", b"sockit-dummy-salt")
                    .ok()
            })
            .as_ref()
    }

    /// Checks `password` for `name`, spending one Argon2 verification whether or not the user
    /// exists (an unknown name is verified against a dummy hash), so a failure takes about as
    /// long either way. Returns the stored name on success. Slow by design: call it off the
    /// async threads.
    pub fn verify(&self, name: Option<&str>, password: &[u8]) -> Option<Arc<str>> {
        let entry = name
            .and_then(|n| self.by_name.get(n))
            .map(|&i| &self.entries[i]);
        let argon = Argon2::default();
        match entry {
            Some(entry) => argon
                .verify_password(password, &entry.hash)
                .is_ok()
                .then(|| entry.name.clone()),
            None => {
                if let Some(dummy) = self.dummy() {
                    let _ = argon.verify_password(password, dummy);
                }
                None
            }
        }
    }
}

/// Reads a whole file of at most [`MAX_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, UsersError> {
    let io_err = |source| UsersError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(UsersError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Hashes `password` as an Argon2id PHC string with the default parameters and a random salt.
pub fn hash_password(password: &[u8]) -> Result<String, UsersError> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// What [`add_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new user.
    New,
    /// An existing user got a new password.
    Replaced,
}

/// Adds `name` with `password` to the users file at `path` (creating it), or sets a new
/// password for an existing user. Other lines are kept as they are.
pub fn add_user(path: &Path, name: &str, password: &[u8]) -> Result<Added, UsersError> {
    check_name(name)?;
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(UsersError::LongPassword);
    }
    let hash = hash_password(password)?;
    let _lock = DirLock::acquire(path)?;
    let old = match read_bounded(path) {
        Ok(bytes) => bytes,
        Err(UsersError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    UserTable::parse(&old, path)?;
    let new_line = format!("{name}:{hash}");
    let (mut text, found) = rewrite(&old, name, Some(&new_line));
    if !found {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&new_line);
        text.push('\n');
    }
    write_atomically(path, text.as_bytes())?;
    Ok(if found { Added::Replaced } else { Added::New })
}

/// Removes `name` from the users file at `path`; [`UsersError::NoSuchUser`] if absent.
pub fn remove_user(path: &Path, name: &str) -> Result<(), UsersError> {
    let _lock = DirLock::acquire(path)?;
    let old = read_bounded(path)?;
    UserTable::parse(&old, path)?;
    let (text, found) = rewrite(&old, name, None);
    if !found {
        return Err(UsersError::NoSuchUser {
            name: name.to_owned(),
            path: path.to_owned(),
        });
    }
    write_atomically(path, text.as_bytes())
}

/// The user names in the file at `path`, in file order.
pub fn list_users(path: &Path) -> Result<Vec<String>, UsersError> {
    Ok(UserTable::load(path)?.names().map(str::to_owned).collect())
}

/// Copies `old` (already validated) line by line, replacing `name`'s line by `new_line`, or
/// dropping it when `new_line` is `None`. Returns the text and whether `name` was found.
fn rewrite(old: &[u8], name: &str, new_line: Option<&str>) -> (String, bool) {
    // Validated as UTF-8 by the caller's parse.
    let old = String::from_utf8_lossy(old);
    let mut text = String::with_capacity(old.len() + 128);
    let mut found = false;
    for line in old.split_inclusive('\n') {
        match classify(line.trim_end_matches(['\n', '\r'])) {
            Ok(Line::User { name: n, .. }) if n == name => {
                found = true;
                if let Some(new_line) = new_line {
                    text.push_str(new_line);
                    text.push('\n');
                }
            }
            _ => text.push_str(line),
        }
    }
    (text, found)
}

/// The directory a file lives in (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Writes `contents` to a temporary file beside `path` (mode 0600), syncs it, renames it over
/// `path`, and syncs the directory so the rename itself survives a crash.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), UsersError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = directory_of(path);
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| UsersError::Io { path: p, source }
    };
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "users".into())
    );
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(contents).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    tmp.persist(path).map_err(|e| UsersError::Io {
        path: path.to_owned(),
        source: e.error,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// An exclusive advisory lock on the directory of the users file, held while it is edited, so
/// that two `sockit user add` at once cannot lose one of the additions. (The file itself cannot
/// carry the lock: each edit replaces it.)
struct DirLock(File);

impl DirLock {
    fn acquire(path: &Path) -> Result<DirLock, UsersError> {
        let dir = directory_of(path);
        let io_err = |source| UsersError::Io {
            path: dir.to_owned(),
            source,
        };
        let file = OpenOptions::new().read(true).open(dir).map_err(io_err)?;
        loop {
            // SAFETY: flock on a descriptor we own, valid for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(DirLock(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(e));
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the descriptor would release the lock anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<UserTable, UsersError> {
        UserTable::parse(text.as_bytes(), Path::new("users"))
    }

    /// A cheap Argon2id hash, so the unit tests do not spend a second hashing.
    fn cheap_hash(password: &[u8]) -> String {
        let params = Params::new(64, 1, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password)
            .unwrap()
            .to_string()
    }

    #[test]
    fn names_are_1_to_32_printable_characters_without_spaces_or_colons() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("张三").is_ok());
        assert!(validate_name(&"x".repeat(32)).is_ok());
        assert!(validate_name(&"界".repeat(32)).is_ok());
        for bad in ["", "a b", "a:b", "a\tb", "a\u{7}", &"x".repeat(33)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn comments_blank_lines_and_entries_parse() {
        let text = format!(
            "# users\n\nalice:{}\r\n  # indented comment\nbob:{}",
            cheap_hash(b"a"),
            cheap_hash(b"b")
        );
        let table = parse(&text).unwrap();
        assert_eq!(table.names().collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(table.verify(Some("alice"), b"a").as_deref(), Some("alice"));
        assert_eq!(table.verify(Some("alice"), b"b"), None);
        assert_eq!(table.verify(Some("carol"), b"a"), None);
        assert_eq!(table.verify(None, b"a"), None);
    }

    #[test]
    fn malformed_lines_are_named_with_file_and_line() {
        let good = cheap_hash(b"x");
        let cases = [
            ("# c\nno colon here\n".to_owned(), 2, "no colon"),
            (format!("a b:{good}\n"), 1, "space"),
            ("alice:\n".to_owned(), 1, "no password hash"),
            ("\n\nalice:plaintext\n".to_owned(), 3, "PHC"),
            (
                format!("alice:{}\n", good.replace("argon2id", "argon2i")),
                1,
                "argon2i",
            ),
            (format!("alice:{good}\nalice:{good}\n"), 2, "twice"),
            (
                "alice:$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n"
                    .to_owned(),
                1,
                "too costly",
            ),
        ];
        for (text, line, why) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("users:{line}: ")), "{e}");
            assert!(e.contains(why), "{e} should mention {why}");
        }
        let e = UserTable::parse(b"ok\n\xff\n", Path::new("u")).unwrap_err();
        assert_eq!(e.to_string(), "u:1: expected name:hash (no colon)");
        let e = UserTable::parse(b"# ok\n\xff\n", Path::new("u")).unwrap_err();
        assert_eq!(e.to_string(), "u:2: not valid UTF-8");
    }

    #[test]
    fn rewriting_keeps_other_lines_verbatim() {
        let old = "# keep me\nalice:H1\n\nbob:H2\n# end";
        let (text, found) = rewrite(old.as_bytes(), "alice", Some("alice:H3"));
        assert!(found);
        assert_eq!(text, "# keep me\nalice:H3\n\nbob:H2\n# end");
        let (text, found) = rewrite(old.as_bytes(), "bob", None);
        assert!(found);
        assert_eq!(text, "# keep me\nalice:H1\n\n# end");
        assert!(!rewrite(old.as_bytes(), "carol", None).1);
    }
}
