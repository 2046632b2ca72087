//! Reading a password for `sockit user add`: from the terminal with echo off (asked twice), or
//! one line from standard input (`--password-stdin`).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use sockit::users::MAX_PASSWORD_BYTES;

/// The terminal's settings while echo is off, to put back on Ctrl-C.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

/// Reads one line of at most [`MAX_PASSWORD_BYTES`] (plus its ending) and removes the ending.
fn read_line(reader: impl Read) -> Result<Vec<u8>> {
    let mut line = Vec::new();
    BufReader::new(reader.take(MAX_PASSWORD_BYTES as u64 + 3)).read_until(b'\n', &mut line)?;
    if line.ends_with(b"\n") {
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
    }
    if line.len() > MAX_PASSWORD_BYTES {
        bail!("password longer than {MAX_PASSWORD_BYTES} bytes refused");
    }
    if line.is_empty() {
        bail!("empty password refused");
    }
    Ok(line)
}

/// The first line of standard input.
pub fn from_stdin() -> Result<Vec<u8>> {
    read_line(io::stdin().lock()).context("reading the password from standard input")
}

/// Asks for the password twice on the terminal, without echo.
pub fn ask_twice() -> Result<Vec<u8>> {
    let mut tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask for the password on (use --password-stdin)")?;
    let first = ask(&mut tty, "password: ")?;
    let second = ask(&mut tty, "password again: ")?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}

/// Shows `prompt` and reads one line with echo off.
fn ask(tty: &mut File, prompt: &str) -> Result<Vec<u8>> {
    let fd = tty.as_raw_fd();
    let mut term = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr fills the struct on success, which is checked before it is read.
    if unsafe { libc::tcgetattr(fd, term.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error()).context("cannot read the terminal settings");
    }
    // SAFETY: initialised by the successful tcgetattr above.
    let saved = unsafe { term.assume_init() };
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, saved));
    // SAFETY: a valid descriptor and a fully initialised termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
        return Err(io::Error::last_os_error()).context("cannot turn off the terminal's echo");
    }
    let read = tty
        .write_all(prompt.as_bytes())
        .and_then(|()| tty.flush())
        .map_err(anyhow::Error::from)
        .and_then(|()| read_line(&*tty));
    restore_echo();
    read
}

/// Puts back the terminal settings saved by a prompt in progress, if any.
pub fn restore_echo() {
    if let Some((fd, saved)) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: `fd` is the terminal still open by the prompt (or about to be closed by it;
        // on a closed descriptor the call merely fails), and `saved` came from tcgetattr.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_is_read_and_its_ending_removed() {
        assert_eq!(read_line(&b"secret\nrest"[..]).unwrap(), b"secret");
        assert_eq!(read_line(&b"secret\r\n"[..]).unwrap(), b"secret");
        assert_eq!(read_line(&b"no newline"[..]).unwrap(), b"no newline");
        assert!(read_line(&b"\n"[..]).is_err());
        assert!(read_line(&b""[..]).is_err());
        let long = vec![b'x'; MAX_PASSWORD_BYTES + 10];
        assert!(read_line(&long[..]).is_err());
        let just = vec![b'x'; MAX_PASSWORD_BYTES];
        assert_eq!(read_line(&just[..]).unwrap().len(), MAX_PASSWORD_BYTES);
    }
}
