//! The client side of file transfer: `sockit send`, `get` and `ls` over one connection.
//!
//! During an upload a watcher task owns the reading half: the server only speaks mid-upload to
//! refuse (disk full, a corrupt chunk), and the watcher notices at once, so the sender stops
//! instead of pushing the rest of a large file into a closed connection.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use indicatif::ProgressBar;
use serde::Deserialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::codec::ByteOrder;
use crate::files::name::FileName;
use crate::files::pipe::{Sink, Source, Target, hash_prefix};
use crate::files::wire::{CHUNK, FrameReader, Head, Op, WireError, write_frame};

/// Why a transfer failed.
#[derive(Debug, Error)]
pub enum TransferError {
    /// The server refused the request; the connection is still usable.
    #[error("{0}")]
    Refused(String),
    /// The server reported a failure and closed the connection.
    #[error("server: {0}")]
    Server(String),
    /// The connection broke or the server broke the protocol.
    #[error("{0}")]
    Connection(String),
    /// A local file could not be read or written.
    #[error("{0}")]
    Local(String),
    /// Standard output was closed by its reader (`sockit get … -o - | head`): not a failure of
    /// the transfer, which stops there.
    #[error("the output was closed")]
    OutputClosed,
}

impl TransferError {
    /// Whether the connection can carry another request after this.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            TransferError::Refused(_) | TransferError::Local(_) | TransferError::OutputClosed
        )
    }
}

impl From<WireError> for TransferError {
    fn from(e: WireError) -> Self {
        match &e {
            WireError::Truncated => {
                TransferError::Connection("the server closed the connection".into())
            }
            WireError::Timeout(d) => TransferError::Connection(format!(
                "no answer from the server for {}s",
                d.as_secs_f64()
            )),
            WireError::HeaderTooLarge(n) if looks_like_tls(*n) => TransferError::Connection(
                "the server answered with TLS: connect with --tls (or a tls:HOST:PORT address)"
                    .into(),
            ),
            WireError::HeaderTooLarge(_) | WireError::Malformed(_) => {
                TransferError::Connection(format!(
                    "the server's answer is not file transfer ({e}): is it `sockit serve \
                     --service files`?"
                ))
            }
            other => TransferError::Connection(other.to_string()),
        }
    }
}

/// Whether a frame's 4-byte length, read big-endian, is the start of a TLS record: a content
/// type of 20-23 (an alert, when a TLS server meets a plain client) and version 3.x.
fn looks_like_tls(n: u64) -> bool {
    let Ok(n) = u32::try_from(n) else {
        return false;
    };
    let [kind, major, minor, _] = n.to_be_bytes();
    (20..=23).contains(&kind) && major == 3 && minor <= 4
}

fn conn_err(e: io::Error) -> TransferError {
    TransferError::Connection(e.to_string())
}

/// A failed write of a download: a closed standard output is its own case.
fn write_error(e: io::Error) -> TransferError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        TransferError::OutputClosed
    } else {
        TransferError::Local(format!("cannot write the download: {e}"))
    }
}

/// A finished upload or download.
#[derive(Debug, Clone)]
pub struct Done {
    /// The name on the server.
    pub name: String,
    /// Bytes moved in this transfer (less than the size when resumed).
    pub bytes: u64,
    /// The whole file's size.
    pub size: u64,
    /// Where a resumed transfer started (0 otherwise).
    pub resumed_at: u64,
    /// BLAKE3 of the whole file, hex, checked by both sides.
    pub blake3: String,
    /// How long the transfer took.
    pub elapsed: Duration,
}

/// One file in a listing.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Listed {
    /// Path relative to the served directory.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: f64,
}

/// Where `get` writes.
#[derive(Debug, Clone)]
pub enum Output {
    /// This file (replaced atomically when the download is complete and verified).
    File(PathBuf),
    /// Standard output.
    Stdout,
}

/// The reading half of the connection: TCP's own half, or a split TLS or unix stream.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type Reader = FrameReader<BufReader<ReadHalf>>;

/// A connection to a `files` server.
pub struct Client {
    reader: Option<Reader>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `addr`; `timeout` bounds the connect and every wait for the server.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client, TransferError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                TransferError::Connection(format!(
                    "connecting to {addr} timed out after {}s",
                    timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| TransferError::Connection(format!("cannot connect to {addr}: {e}")))?;
        let (rd, wr) = stream.into_split();
        Ok(Client::over(Box::new(rd), Box::new(wr), timeout))
    }

    /// Connects through `dial` (a unix socket, a proxy, TLS) to the first of `addrs` that
    /// answers; `timeout` bounds each step and every wait for the server.
    pub async fn connect_dial(
        dial: &crate::transport::stream::Dial,
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Client, TransferError> {
        let (stream, _) = dial
            .connect(addrs, timeout)
            .await
            .map_err(|e| TransferError::Connection(e.to_string()))?;
        let (rd, wr) = tokio::io::split(stream);
        Ok(Client::over(Box::new(rd), Box::new(wr), timeout))
    }

    fn over(rd: ReadHalf, wr: Box<dyn AsyncWrite + Send + Unpin>, timeout: Duration) -> Client {
        Client {
            reader: Some(FrameReader::new(
                BufReader::with_capacity(256 * 1024, rd),
                ByteOrder::Big,
                Some(timeout),
            )),
            writer: wr,
            timeout,
        }
    }

    fn reader(&mut self) -> Result<&mut Reader, TransferError> {
        self.reader
            .as_mut()
            .ok_or_else(|| TransferError::Connection("the connection was lost".into()))
    }

    async fn write(&mut self, head: &Head, body: &[u8]) -> Result<(), TransferError> {
        let t = self.timeout;
        tokio::time::timeout(t, write_frame(&mut self.writer, ByteOrder::Big, head, body))
            .await
            .map_err(|_| {
                TransferError::Connection(format!(
                    "the server stopped reading for {}s",
                    t.as_secs_f64()
                ))
            })?
            .map_err(conn_err)
    }

    /// The next header, waiting at most `timeout` for its first byte too.
    async fn answer(&mut self) -> Result<Head, TransferError> {
        let t = self.timeout;
        let reader = self.reader()?;
        let head = tokio::time::timeout(t, reader.head()).await.map_err(|_| {
            TransferError::Connection(format!(
                "no answer from the server for {}s",
                t.as_secs_f64()
            ))
        })??;
        head.ok_or_else(|| TransferError::Connection("the server closed the connection".into()))
    }

    /// Reads the answer to a request: `ok`, or `error` turned into [`TransferError::Refused`].
    async fn expect_ok(&mut self) -> Result<Head, TransferError> {
        let head = self.answer().await?;
        match head.op {
            Op::Ok => Ok(head),
            Op::Error => Err(TransferError::Refused(head.message.unwrap_or_default())),
            op => Err(TransferError::Connection(format!(
                "unexpected {op:?} answer from the server"
            ))),
        }
    }

    /// Uploads `path` as `name`, resuming a partial upload the server holds when its prefix
    /// matches the local file.
    pub async fn send_file(
        &mut self,
        path: &Path,
        name: &FileName,
        bar: &ProgressBar,
    ) -> Result<Done, TransferError> {
        let local = |e: io::Error| TransferError::Local(format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(local)?;
        let meta = file.metadata().map_err(local)?;
        if !meta.is_file() {
            return Err(TransferError::Local(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        let size = meta.len();
        let mut put = Head::new(Op::Put);
        put.name = Some(name.to_string());
        put.size = Some(size);
        put.mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        self.write(&put, b"").await?;
        let ok = self.expect_ok().await?;
        let offered = ok.offset.unwrap_or(0);
        if offered > size {
            return Err(TransferError::Connection(format!(
                "the server offered to resume at byte {offered} of a {size}-byte file"
            )));
        }
        let (file, mut hasher) = hash_prefix(file, offered).await.map_err(local)?;
        let mut start = offered;
        if offered > 0 {
            let theirs = ok.prefix_blake3.unwrap_or_default().to_ascii_lowercase();
            if hasher.clone().finalize().to_hex().as_str() != theirs {
                start = 0;
                hasher = blake3::Hasher::new();
            }
            let mut resume = Head::new(Op::Resume);
            resume.offset = Some(start);
            self.write(&resume, b"").await?;
        }
        bar.set_length(size);
        bar.set_position(start);
        let started = Instant::now();
        // The watcher holds the reader until the final answer (or an early error) arrives.
        let mut reader = self
            .reader
            .take()
            .ok_or_else(|| TransferError::Connection("the connection was lost".into()))?;
        reader.set_timeout(None);
        let watcher: JoinHandle<(Reader, Result<Option<Head>, WireError>)> =
            tokio::spawn(async move {
                let got = reader.head().await;
                (reader, got)
            });
        let mut source = Source::spawn(file, start, size, hasher);
        let data = Head::new(Op::Data);
        let mut write_failed = None;
        while let Some(chunk) = source.next().await {
            if watcher.is_finished() {
                break;
            }
            if let Err(e) = self.write(&data, &chunk).await {
                write_failed = Some(e);
                break;
            }
            bar.inc(chunk.len() as u64);
            source.recycle(chunk);
        }
        let early = watcher.is_finished() || write_failed.is_some();
        let hash = if early {
            // Stop reading the file; its result no longer matters.
            drop(source);
            None
        } else {
            match source.finish().await {
                Ok(hash) => Some(hash.to_hex().to_string()),
                Err(e) => {
                    let _ = self
                        .write(&Head::error(format!("cannot read the file: {e}")), b"")
                        .await;
                    watcher.abort();
                    return Err(local(e));
                }
            }
        };
        if let Some(hash) = &hash {
            let mut end = Head::new(Op::End);
            end.blake3 = Some(hash.clone());
            if let Err(e) = self.write(&end, b"").await {
                write_failed = Some(e);
            }
        }
        let t = self.timeout;
        // After a failed write the server's reason may already be waiting: look briefly.
        let wait = if write_failed.is_some() {
            Duration::from_secs(2)
        } else {
            t.max(Duration::from_secs(60))
        };
        let answer = match tokio::time::timeout(wait, watcher).await {
            Ok(Ok((reader, got))) => {
                self.reader = Some(reader);
                got
            }
            Ok(Err(e)) => return Err(TransferError::Connection(format!("the reader failed: {e}"))),
            Err(_) => {
                return Err(write_failed.unwrap_or_else(|| {
                    TransferError::Connection(format!(
                        "no answer from the server for {}s after the upload",
                        wait.as_secs_f64()
                    ))
                }));
            }
        };
        if let Some(reader) = &mut self.reader {
            reader.set_timeout(Some(t));
        }
        let head = match answer {
            Ok(Some(head)) => head,
            Ok(None) => {
                return Err(write_failed.unwrap_or_else(|| {
                    TransferError::Connection(
                        "the server closed the connection before confirming".into(),
                    )
                }));
            }
            Err(e) => return Err(write_failed.unwrap_or_else(|| e.into())),
        };
        match (head.op, hash) {
            (Op::Error, _) => Err(TransferError::Server(head.message.unwrap_or_default())),
            (Op::Ok, Some(hash)) => {
                let theirs = head.blake3.unwrap_or_default().to_ascii_lowercase();
                if theirs != hash {
                    return Err(TransferError::Server(format!(
                        "the server stored blake3 {theirs}, but the file has {hash}"
                    )));
                }
                Ok(Done {
                    name: name.to_string(),
                    bytes: size - start,
                    size,
                    resumed_at: start,
                    blake3: hash,
                    elapsed: started.elapsed(),
                })
            }
            (op, _) => Err(TransferError::Connection(format!(
                "unexpected {op:?} from the server during the upload"
            ))),
        }
    }

    /// Downloads `name` to `output`, verifying size and BLAKE3; a file output is written to a
    /// hidden temporary file beside it, synced, and renamed into place.
    pub async fn get_file(
        &mut self,
        name: &str,
        output: &Output,
        bar: &ProgressBar,
    ) -> Result<Done, TransferError> {
        let temp = match output {
            Output::Stdout => None,
            Output::File(path) => {
                let dir = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                    _ => PathBuf::from("."),
                };
                let temp = tempfile::Builder::new()
                    .prefix(".sockit-get-")
                    .tempfile_in(&dir)
                    .map_err(|e| {
                        TransferError::Local(format!("cannot write in {}: {e}", dir.display()))
                    })?;
                Some((temp, dir))
            }
        };
        let mut get = Head::new(Op::Get);
        get.name = Some(name.to_owned());
        self.write(&get, b"").await?;
        let ok = self.expect_ok().await?;
        let size = ok.size.unwrap_or(0);
        let target = match &temp {
            None => Target::Stdout,
            Some((t, _)) => Target::File(
                t.as_file()
                    .try_clone()
                    .map_err(|e| TransferError::Local(e.to_string()))?,
            ),
        };
        bar.set_length(size);
        let started = Instant::now();
        let mut sink = Sink::spawn(target, blake3::Hasher::new(), false);
        let mut got = 0u64;
        let end = loop {
            let head = self.answer().await?;
            match head.op {
                Op::Data => {
                    if head.len > CHUNK as u64 || got + head.len > size {
                        return Err(TransferError::Connection(format!(
                            "the server sent more than the announced {size} bytes"
                        )));
                    }
                    let mut buf = sink.buffer().await;
                    self.reader()?.body(head.len as usize, &mut buf).await?;
                    got += head.len;
                    bar.inc(head.len);
                    sink.push(buf).await.map_err(write_error)?;
                }
                Op::End => break head,
                Op::Error => return Err(TransferError::Server(head.message.unwrap_or_default())),
                op => {
                    return Err(TransferError::Connection(format!(
                        "unexpected {op:?} during the download"
                    )));
                }
            }
        };
        let written = sink.finish().await.map_err(write_error)?;
        if got != size {
            return Err(TransferError::Connection(format!(
                "{got} bytes arrived of the announced {size}"
            )));
        }
        let hash = written.hasher.finalize().to_hex().to_string();
        let theirs = end.blake3.unwrap_or_default().to_ascii_lowercase();
        if theirs != hash {
            return Err(TransferError::Connection(format!(
                "blake3 mismatch: received {hash}, the server sent {theirs}; the download was discarded"
            )));
        }
        if let (Some((temp, dir)), Output::File(path)) = (temp, output) {
            if let Some(mtime) = ok.mtime.filter(|t| t.is_finite() && *t >= 0.0) {
                let _ = temp
                    .as_file()
                    .set_modified(UNIX_EPOCH + Duration::from_secs_f64(mtime.min(1e11)));
            }
            temp.persist(path).map_err(|e| {
                TransferError::Local(format!("cannot write {}: {}", path.display(), e.error))
            })?;
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        Ok(Done {
            name: name.to_owned(),
            bytes: got,
            size,
            resumed_at: 0,
            blake3: hash,
            elapsed: started.elapsed(),
        })
    }

    /// Lists the served files, calling `found` for each.
    pub async fn list(&mut self, mut found: impl FnMut(Listed)) -> Result<u64, TransferError> {
        self.write(&Head::new(Op::List), b"").await?;
        self.expect_ok().await?;
        let mut seen = 0u64;
        let mut body = Vec::new();
        loop {
            let head = self.answer().await?;
            match head.op {
                Op::Data => {
                    if head.len > CHUNK as u64 {
                        return Err(TransferError::Connection(
                            "an oversized listing frame".into(),
                        ));
                    }
                    self.reader()?.body(head.len as usize, &mut body).await?;
                    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        let entry: Listed = serde_json::from_slice(line).map_err(|e| {
                            TransferError::Connection(format!("a malformed listing entry: {e}"))
                        })?;
                        seen += 1;
                        found(entry);
                    }
                }
                Op::End => return Ok(head.count.unwrap_or(seen)),
                Op::Error => return Err(TransferError::Server(head.message.unwrap_or_default())),
                op => {
                    return Err(TransferError::Connection(format!(
                        "unexpected {op:?} in a listing"
                    )));
                }
            }
        }
    }

    /// Closes the connection cleanly.
    pub async fn close(mut self) {
        let _ = self.writer.shutdown().await;
    }
}

/// Formats a modification time as `YYYY-MM-DD HH:MM:SS` in local time.
pub fn format_mtime(secs: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs_f64(secs.clamp(0.0, 1e11));
    let dt: chrono::DateTime<chrono::Local> = t.into();
    dt.format("%Y-%m-%d %H:%M:%S").to_string()
}
