//! File names as the file-transfer protocol carries them: relative paths of `/`-separated
//! components, checked before anything touches the disk.

use std::fmt;

use thiserror::Error;

/// Longest component a name may have (the common file-system limit).
pub const MAX_COMPONENT: usize = 255;
/// Longest whole name.
pub const MAX_NAME: usize = 4096;
/// Names starting with this are the store's own (partial uploads): never served or accepted.
pub const RESERVED_PREFIX: &str = ".sockit-";

/// Why a name was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Empty name.
    #[error("the name is empty")]
    Empty,
    /// Starts with `/`.
    #[error("'{0}' is an absolute path: names are relative to the served directory")]
    Absolute(String),
    /// Contains a backslash.
    #[error("'{0}' contains a backslash: components are separated by '/'")]
    Backslash(String),
    /// Contains NUL or another control character.
    #[error("the name contains a control character (byte 0x{0:02x})")]
    Control(u8),
    /// `a//b` or a trailing `/`.
    #[error("'{0}' has an empty component")]
    EmptyComponent(String),
    /// `.` or `..`.
    #[error("'{0}' contains a '{1}' component: names cannot leave or name the directory")]
    Dots(String, &'static str),
    /// A component over [`MAX_COMPONENT`] bytes.
    #[error("a component of the name is {0} bytes long (at most {MAX_COMPONENT})")]
    ComponentTooLong(usize),
    /// The whole name is over [`MAX_NAME`] bytes.
    #[error("the name is {0} bytes long (at most {MAX_NAME})")]
    TooLong(usize),
    /// More than one component where only one is allowed.
    #[error("'{0}' has several components: only a plain file name is allowed here")]
    Nested(String),
    /// A component starting with [`RESERVED_PREFIX`].
    #[error("'{0}' uses the reserved prefix '{RESERVED_PREFIX}'")]
    Reserved(String),
}

/// A checked relative name: one or more components, none of them empty, `.`, `..` or reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileName(String);

impl FileName {
    /// Checks `s`; `nested` allows several components (directory trees).
    pub fn parse(s: &str, nested: bool) -> Result<FileName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME {
            return Err(NameError::TooLong(s.len()));
        }
        if let Some(&b) = s.as_bytes().iter().find(|&&b| b < 0x20 || b == 0x7f) {
            return Err(NameError::Control(b));
        }
        if s.starts_with('/') {
            return Err(NameError::Absolute(s.to_owned()));
        }
        if s.contains('\\') {
            return Err(NameError::Backslash(s.to_owned()));
        }
        let mut count = 0;
        for part in s.split('/') {
            count += 1;
            match part {
                "" => return Err(NameError::EmptyComponent(s.to_owned())),
                "." => return Err(NameError::Dots(s.to_owned(), ".")),
                ".." => return Err(NameError::Dots(s.to_owned(), "..")),
                p if p.len() > MAX_COMPONENT => return Err(NameError::ComponentTooLong(p.len())),
                p if p.starts_with(RESERVED_PREFIX) => {
                    return Err(NameError::Reserved(s.to_owned()));
                }
                _ => {}
            }
        }
        if count > 1 && !nested {
            return Err(NameError::Nested(s.to_owned()));
        }
        Ok(FileName(s.to_owned()))
    }

    /// The name as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The directories above the file, and the file's own component.
    pub fn split_last(&self) -> (Vec<&str>, &str) {
        let mut parts: Vec<&str> = self.components().collect();
        let last = parts.pop().unwrap_or_default();
        (parts, last)
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_nested_names_are_accepted() {
        assert_eq!(FileName::parse("a.txt", false).unwrap().as_str(), "a.txt");
        assert_eq!(
            FileName::parse(".hidden", false).unwrap().as_str(),
            ".hidden"
        );
        let n = FileName::parse("d/e/f.bin", true).unwrap();
        assert_eq!(n.split_last(), (vec!["d", "e"], "f.bin"));
        assert!(FileName::parse("名前.txt", false).is_ok());
    }

    #[test]
    fn every_escaping_or_ambiguous_name_is_refused() {
        let bad = [
            "",
            "/etc/passwd",
            "../../etc/passwd",
            "a/../../b",
            "./a",
            "a/.",
            "..",
            ".",
            "a//b",
            "a/",
            "a\\b",
            "..\\..\\x",
            "a\0b",
            "a\nb",
            ".sockit-part-1",
            "d/.sockit-x",
        ];
        for name in bad {
            assert!(
                FileName::parse(name, true).is_err(),
                "{name:?} was accepted"
            );
        }
        let long = "x".repeat(256);
        assert_eq!(
            FileName::parse(&long, false),
            Err(NameError::ComponentTooLong(256))
        );
        assert!(FileName::parse(&"x".repeat(255), false).is_ok());
    }

    #[test]
    fn nested_names_need_permission() {
        assert_eq!(
            FileName::parse("a/b", false),
            Err(NameError::Nested("a/b".into()))
        );
    }
}
