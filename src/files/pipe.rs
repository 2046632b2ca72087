//! The disk side of a transfer, on a blocking thread, overlapped with the network side: a sink
//! writes and hashes chunks while the next one is being received; a source reads and hashes
//! chunks while the previous one is being sent. A small pool of chunk buffers circulates
//! between the two sides, so a transfer of any size holds at most [`POOL`] chunks.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use md5::Digest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::files::wire::CHUNK;

/// Chunk buffers one transfer may hold.
pub const POOL: usize = 3;
/// Memory one transfer may hold, to charge against the server's budget.
pub const TRANSFER_MEMORY: usize = POOL * CHUNK + 64 * 1024;

/// Where received bytes go.
#[derive(Debug)]
pub enum Target {
    /// A file, synced to disk when the transfer finishes.
    File(File),
    /// Standard output (nothing to sync).
    Stdout,
}

/// What a finished sink wrote.
#[derive(Debug)]
pub struct Written {
    /// The hasher, having seen every byte (and whatever prefix it started with).
    pub hasher: blake3::Hasher,
    /// The MD5 of the bytes written, when asked for.
    pub md5: Option<[u8; 16]>,
    /// Bytes written by this sink.
    pub bytes: u64,
    /// The file, for the caller to commit.
    pub file: Option<File>,
}

fn pool_channel() -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    mpsc::channel(POOL)
}

/// Writes and hashes chunks on a blocking thread.
#[derive(Debug)]
pub struct Sink {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    spare: mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    join: JoinHandle<io::Result<Written>>,
}

impl Sink {
    /// Starts a sink writing to `target` from its current position, continuing `hasher`.
    pub fn spawn(target: Target, mut hasher: blake3::Hasher, md5: bool) -> Sink {
        let (tx, mut rx) = pool_channel();
        let (spare_tx, spare) = pool_channel();
        let join = tokio::task::spawn_blocking(move || {
            let mut md5 = md5.then(md5::Md5::new);
            let mut bytes = 0u64;
            let mut stdout = None;
            let mut file = None;
            match target {
                Target::File(f) => file = Some(f),
                Target::Stdout => stdout = Some(io::stdout().lock()),
            }
            let mut flush = match &mut file {
                Some(f) => Some(Writeback::new(f.stream_position()?)),
                None => None,
            };
            while let Some(chunk) = rx.blocking_recv() {
                match (&mut file, &mut stdout) {
                    (Some(f), _) => {
                        f.write_all(&chunk)?;
                        if let Some(w) = &mut flush {
                            w.wrote(f, chunk.len() as u64);
                        }
                    }
                    (None, Some(out)) => out.write_all(&chunk)?,
                    (None, None) => {}
                }
                hasher.update(&chunk);
                if let Some(m) = &mut md5 {
                    m.update(&chunk);
                }
                bytes += chunk.len() as u64;
                // The async side may have finished: a buffer it no longer wants is dropped.
                let _ = spare_tx.try_send(chunk);
            }
            if let Some(f) = &file {
                f.sync_all()?;
            }
            if let Some(out) = &mut stdout {
                out.flush()?;
            }
            Ok(Written {
                hasher,
                md5: md5.map(|m| m.finalize().into()),
                bytes,
                file,
            })
        });
        Sink {
            tx: Some(tx),
            spare,
            allocated: 0,
            join,
        }
    }

    /// An empty buffer to receive the next chunk into: a returned one, or a new one while
    /// fewer than [`POOL`] exist.
    pub async fn buffer(&mut self) -> Vec<u8> {
        let mut buf = if let Ok(buf) = self.spare.try_recv() {
            buf
        } else if self.allocated < POOL {
            self.allocated += 1;
            Vec::with_capacity(CHUNK)
        } else {
            // `None`: the writer ended (an error), which `push` reports.
            self.spare.recv().await.unwrap_or_default()
        };
        buf.clear();
        buf
    }

    /// Hands a chunk to the writer. Fails with the writer's error if it stopped.
    pub async fn push(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(io::Error::other("the sink is finished"));
        };
        if tx.send(chunk).await.is_err() {
            self.tx = None;
            return Err(self.writer_error().await);
        }
        Ok(())
    }

    async fn writer_error(&mut self) -> io::Error {
        match (&mut self.join).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => io::Error::other("the writer stopped early"),
            Err(e) => io::Error::other(format!("the writer failed: {e}")),
        }
    }

    /// Waits for every chunk to be written (and the file synced).
    pub async fn finish(mut self) -> io::Result<Written> {
        self.tx = None;
        match self.join.await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!("the writer failed: {e}"))),
        }
    }
}

/// Starts writing a file's pages to disk while later chunks are still arriving, and waits for
/// pages [`WRITEBACK_LAG`] behind the newest, so the final fsync has only the last few MiB to
/// flush: the disk works during the transfer instead of after it, and dirty pages stay few.
#[derive(Debug)]
struct Writeback {
    /// End of the bytes written so far.
    end: u64,
    /// Everything before this is known to be on disk.
    done: u64,
}

/// How far behind the newest chunk writeback is waited for: enough that a disk keeping up
/// never stalls the transfer, little enough that one transfer's dirty pages stay bounded.
const WRITEBACK_LAG: u64 = 64 * CHUNK as u64;

impl Writeback {
    fn new(start: u64) -> Writeback {
        Writeback {
            end: start,
            done: start,
        }
    }

    /// Called after `len` more bytes were written. Failures are ignored: the final fsync
    /// reports any real error.
    fn wrote(&mut self, file: &File, len: u64) {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let start = self.end;
        self.end += len;
        // SAFETY: plain syscalls on a descriptor we own; they only schedule or await I/O.
        unsafe {
            libc::sync_file_range(
                fd,
                start as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        let wait_to = self.end.saturating_sub(WRITEBACK_LAG);
        if wait_to > self.done {
            // SAFETY: as above.
            unsafe {
                libc::sync_file_range(
                    fd,
                    self.done as libc::off64_t,
                    (wait_to - self.done) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            self.done = wait_to;
        }
    }
}

/// Hashes the first `len` bytes of `file` (a partial upload's prefix) on a blocking thread,
/// leaving the file positioned at `len`.
pub async fn hash_prefix(mut file: File, len: u64) -> io::Result<(File, blake3::Hasher)> {
    tokio::task::spawn_blocking(move || {
        file.seek(SeekFrom::Start(0))?;
        let mut hasher = blake3::Hasher::new();
        let copied = io::copy(&mut (&mut file).take(len), &mut hasher)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file has {copied} bytes, expected {len}"),
            ));
        }
        Ok((file, hasher))
    })
    .await
    .map_err(|e| io::Error::other(format!("hashing failed: {e}")))?
}

/// Reads and hashes a file on a blocking thread, chunk by chunk.
#[derive(Debug)]
pub struct Source {
    rx: mpsc::Receiver<Vec<u8>>,
    spare: Option<mpsc::Sender<Vec<u8>>>,
    join: Option<JoinHandle<io::Result<blake3::Hash>>>,
}

impl Source {
    /// Reads `file` from `start` to `size`, feeding `hasher` (which must already cover the
    /// bytes before `start`). Reading stops at `size` even if the file grew; a file that
    /// shrank is an error.
    pub fn spawn(mut file: File, start: u64, size: u64, mut hasher: blake3::Hasher) -> Source {
        let (tx, rx) = pool_channel();
        let (spare, mut spare_rx) = pool_channel();
        let join = tokio::task::spawn_blocking(move || {
            file.seek(SeekFrom::Start(start))?;
            let mut pos = start;
            let mut allocated = 0;
            while pos < size {
                let mut buf = match spare_rx.try_recv() {
                    Ok(buf) => buf,
                    Err(_) if allocated < POOL => {
                        allocated += 1;
                        Vec::with_capacity(CHUNK)
                    }
                    Err(_) => match spare_rx.blocking_recv() {
                        Some(buf) => buf,
                        None => return Err(io::Error::other("the transfer was abandoned")),
                    },
                };
                let want = (size - pos).min(CHUNK as u64) as usize;
                buf.clear();
                buf.resize(want, 0);
                let mut filled = 0;
                while filled < want {
                    match file.read(&mut buf[filled..]) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "the file shrank while being read ({} of {size} bytes)",
                                    pos + filled as u64
                                ),
                            ));
                        }
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                hasher.update(&buf);
                pos += want as u64;
                if tx.blocking_send(buf).is_err() {
                    return Err(io::Error::other("the transfer was abandoned"));
                }
            }
            Ok(hasher.finalize())
        });
        Source {
            rx,
            spare: Some(spare),
            join: Some(join),
        }
    }

    /// The next chunk, or `None` when the file is read through (then call [`Source::finish`]).
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }

    /// Gives a sent chunk's buffer back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if let Some(spare) = &self.spare {
            let _ = spare.try_send(buf);
        }
    }

    /// The BLAKE3 of the whole file, or the read error that ended it early.
    pub async fn finish(mut self) -> io::Result<blake3::Hash> {
        self.spare = None;
        self.rx.close();
        let Some(join) = self.join.take() else {
            return Err(io::Error::other("the source is finished"));
        };
        match join.await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!("the reader failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_and_a_sink_copy_and_hash_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("a"), &data).unwrap();
        let mut src = Source::spawn(
            File::open(dir.path().join("a")).unwrap(),
            0,
            data.len() as u64,
            blake3::Hasher::new(),
        );
        let out = File::create(dir.path().join("b")).unwrap();
        let mut sink = Sink::spawn(Target::File(out), blake3::Hasher::new(), true);
        while let Some(chunk) = src.next().await {
            let mut buf = sink.buffer().await;
            buf.extend_from_slice(&chunk);
            src.recycle(chunk);
            sink.push(buf).await.unwrap();
        }
        let sent = src.finish().await.unwrap();
        let written = sink.finish().await.unwrap();
        assert_eq!(written.hasher.finalize(), sent);
        assert_eq!(sent, blake3::hash(&data));
        assert_eq!(written.bytes, data.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), data);
        assert_eq!(
            written.md5.unwrap(),
            <[u8; 16]>::from(md5::Md5::digest(&data))
        );
    }

    #[tokio::test]
    async fn a_file_that_shrank_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        let f = File::open(dir.path().join("a")).unwrap();
        let mut src = Source::spawn(f, 0, 10, blake3::Hasher::new());
        while src.next().await.is_some() {}
        let err = src.finish().await.unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }
}
