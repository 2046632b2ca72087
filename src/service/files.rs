//! `files`: uploads, downloads and listings of one directory over header framing, and the
//! tutorials' own upload scheme (a little-endian length, a `file_name`/`file_size` JSON
//! header, then the raw bytes), told apart per connection by the first frame.
//!
//! The service takes whole TCP connections ([`Service::stream_handler`]): a transfer streams
//! 1 MiB chunks between the socket and a blocking disk thread, which a message-by-message
//! session could not do at disk speed. Uploads land in a hidden partial file beside their
//! target, are checked (size, BLAKE3, MD5 for the tutorial scheme), synced and renamed into
//! place; an interrupted one stays behind for `sockit send` to resume, and is removed after
//! `partial_ttl` if nobody does.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tracing::{debug, info, warn};

use crate::codec::ByteOrder;
use crate::files::name::FileName;
use crate::files::pipe::{Sink, Source, TRANSFER_MEMORY, Target, hash_prefix};
use crate::files::store::{Partial, Store};
use crate::files::wire::{CHUNK, FirstFrame, FrameReader, Head, Op, WireError, write_frame};
use crate::files::{DEFAULT_MAX_FILE_SIZE, DEFAULT_PARTIAL_TTL, progress_bar, summary};
use crate::message::Message;
use crate::service::{Outbox, PeerInfo, Service, Session, StreamContext, StreamHandler};
use crate::transport::stream::BoxStream;
use crate::transport::tcp::{CloseReason, ConnReport};

/// Entries per listing frame body (JSON lines), before a new frame starts.
const LIST_FRAME: usize = 64 * 1024;
/// How long a connection refused mid-stream keeps being drained so the peer reads why.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// How often abandoned partial uploads are looked for.
const CLEAN_EVERY: Duration = Duration::from_secs(3600);

/// How `sockit serve --service files` was configured.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// The served directory (must exist).
    pub dir: PathBuf,
    /// Serve downloads and listings only.
    pub read_only: bool,
    /// Let an upload replace an existing file.
    pub overwrite: bool,
    /// Largest upload accepted.
    pub max_file_size: u64,
    /// Abandoned partial uploads older than this are removed.
    pub partial_ttl: Duration,
    /// Show a progress bar per transfer on stderr (when it is a terminal).
    pub progress: bool,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            dir: PathBuf::from("."),
            read_only: false,
            overwrite: false,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            partial_ttl: DEFAULT_PARTIAL_TTL,
            progress: false,
        }
    }
}

/// The `files` service.
#[derive(Debug, Clone)]
pub struct Files {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    config: FilesConfig,
    /// Names being uploaded (`n:NAME`) and their partial files (`p:PART`).
    busy: Mutex<HashSet<String>>,
    bars: Option<MultiProgress>,
}

impl Files {
    /// Opens the directory; fails if it does not exist or is not a directory.
    pub fn new(config: FilesConfig) -> io::Result<Files> {
        let store = Store::open(&config.dir)?;
        let bars = config.progress.then(MultiProgress::new);
        Ok(Files {
            inner: Arc::new(Inner {
                store,
                config,
                busy: Mutex::default(),
                bars,
            }),
        })
    }

    /// Removes abandoned partial uploads now; returns how many.
    pub fn clean_partials(&self) -> usize {
        let inner = &self.inner;
        inner
            .store
            .clean_partials(inner.config.partial_ttl, |part| {
                inner.is_busy(&format!("p:{part}"))
            })
    }
}

impl Service for Files {
    type Session = NeedsStream;

    fn open(&self, _peer: &PeerInfo) -> NeedsStream {
        NeedsStream
    }

    fn quit_words(&self) -> bool {
        false
    }

    fn start(&self) {
        let files = self.clone();
        tokio::spawn(async move {
            loop {
                let f = files.clone();
                match tokio::task::spawn_blocking(move || f.clean_partials()).await {
                    Ok(0) => {}
                    Ok(n) => info!("removed {n} abandoned partial upload(s)"),
                    Err(e) => warn!("cleaning partial uploads failed: {e}"),
                }
                tokio::time::sleep(
                    CLEAN_EVERY.min(files.inner.config.partial_ttl.max(Duration::from_secs(1))),
                )
                .await;
            }
        });
    }

    fn stream_handler(&self) -> Option<Arc<dyn StreamHandler>> {
        Some(self.inner.clone())
    }
}

/// The session a datagram peer would get: file transfer needs a stream, so it says so.
#[derive(Debug)]
pub struct NeedsStream;

impl Session for NeedsStream {
    async fn on_message(&mut self, _msg: Message, out: &mut Outbox) {
        out.send(Message::text(
            "error: the files service works over TCP only",
        ));
        out.close();
    }
}

impl StreamHandler for Inner {
    fn serve(
        self: Arc<Self>,
        stream: BoxStream,
        ctx: StreamContext,
    ) -> Pin<Box<dyn Future<Output = ConnReport> + Send>> {
        Box::pin(async move {
            let started = Instant::now();
            let (rd, wr) = tokio::io::split(stream);
            let mut conn = Conn {
                inner: self,
                reader: FrameReader::new(
                    BufReader::with_capacity(64 * 1024, rd),
                    ByteOrder::Big,
                    ctx.frame_timeout,
                ),
                writer: wr,
                order: ByteOrder::Big,
                ctx,
                bytes_in: 0,
                bytes_out: 0,
                frames_in: 0,
                frames_out: 0,
            };
            let reason = conn.run().await;
            let _ = conn.writer.shutdown().await;
            ConnReport {
                reason,
                messages_in: conn.frames_in,
                messages_out: conn.frames_out,
                bytes_in: conn.bytes_in,
                bytes_out: conn.bytes_out,
                duration: started.elapsed(),
            }
        })
    }
}

impl Inner {
    fn is_busy(&self, key: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// Marks `key` busy; `None` if it already was.
    fn claim(self: &Arc<Self>, key: String) -> Option<Claim> {
        let fresh = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        fresh.then(|| Claim {
            inner: self.clone(),
            key,
        })
    }

    fn bar(&self, total: u64, label: &str) -> ProgressBar {
        match &self.bars {
            Some(bars) => bars.add(progress_bar(total, label, true)),
            None => ProgressBar::hidden(),
        }
    }
}

/// A busy mark, released on drop.
struct Claim {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Memory taken from the server's budget for one transfer, given back on drop.
struct Reserved(Arc<crate::budget::MemoryBudget>);

impl Drop for Reserved {
    fn drop(&mut self) {
        self.0.give_back(TRANSFER_MEMORY);
    }
}

/// How a request ended.
enum Outcome {
    /// Done or refused with an `error` answer: read the next request.
    Next,
    /// The connection is over.
    Close(CloseReason),
}

struct Conn {
    inner: Arc<Inner>,
    reader: FrameReader<BufReader<ReadHalf<BoxStream>>>,
    writer: WriteHalf<BoxStream>,
    order: ByteOrder,
    ctx: StreamContext,
    bytes_in: u64,
    bytes_out: u64,
    frames_in: u64,
    frames_out: u64,
}

fn wire_reason(e: WireError) -> CloseReason {
    match e {
        WireError::Io(e) => CloseReason::Io(e),
        WireError::Timeout(d) => CloseReason::FrameTimeout(d),
        WireError::Truncated => CloseReason::Failed("closed in the middle of a frame".into()),
        other => CloseReason::Failed(other.to_string()),
    }
}

fn mtime_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Conn {
    async fn run(&mut self) -> CloseReason {
        let first = match self.wait_request(true).await {
            Ok(Some(first)) => first,
            Ok(None) => return CloseReason::PeerClosed,
            Err(reason) => return reason,
        };
        let mut outcome = match first {
            Request::Tutorial(map) => return self.tutorial(map).await,
            Request::Head(head) => self.request(head).await,
        };
        loop {
            if let Outcome::Close(reason) = outcome {
                return reason;
            }
            let head = match self.wait_request(false).await {
                Ok(Some(Request::Head(head))) => head,
                Ok(Some(Request::Tutorial(_))) => {
                    return CloseReason::Failed("a tutorial header after sockit frames".into());
                }
                Ok(None) => return CloseReason::PeerClosed,
                Err(reason) => return reason,
            };
            outcome = self.request(head).await;
        }
    }

    /// Waits for the next request under the idle timeout, or for shutdown.
    async fn wait_request(&mut self, first: bool) -> Result<Option<Request>, CloseReason> {
        let idle = self.ctx.idle_timeout;
        let read = async {
            if first {
                self.reader.first().await.map(|f| {
                    f.map(|f| match f {
                        FirstFrame::Sockit(order, head) => {
                            self.order = order;
                            Request::Head(head)
                        }
                        FirstFrame::Tutorial(map) => Request::Tutorial(map),
                    })
                })
            } else {
                self.reader.head().await.map(|h| h.map(Request::Head))
            }
        };
        let closing = &mut self.ctx.closing;
        let got = tokio::select! {
            () = closing => return Err(CloseReason::Shutdown),
            got = async {
                match idle {
                    Some(t) => tokio::time::timeout(t, read).await.map_err(|_| CloseReason::IdleTimeout(t)),
                    None => Ok(read.await),
                }
            } => got?,
        };
        match got {
            Ok(Some(req)) => {
                self.frames_in += 1;
                Ok(Some(req))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                let reason = wire_reason(e);
                if let CloseReason::Failed(why) = &reason {
                    self.fail(why).await;
                }
                Err(reason)
            }
        }
    }

    async fn send(&mut self, head: &Head, body: &[u8]) -> io::Result<()> {
        let write = write_frame(&mut self.writer, self.order, head, body);
        match self.ctx.frame_timeout {
            Some(t) => tokio::time::timeout(t, write).await.map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")
            })??,
            None => write.await?,
        }
        self.frames_out += 1;
        self.bytes_out += body.len() as u64 + 64;
        Ok(())
    }

    /// Answers a request with an `error` and goes on with the next one.
    async fn refuse(&mut self, why: impl Into<String>) -> Outcome {
        let why = why.into();
        debug!("{}: refused: {why}", self.ctx.peer.addr);
        match self.send(&Head::error(why), b"").await {
            Ok(()) => Outcome::Next,
            Err(e) => Outcome::Close(CloseReason::Io(e)),
        }
    }

    /// Sends a final `error`, then keeps reading (and dropping) what the peer still sends for
    /// a moment, so the error is read instead of destroyed by a reset.
    async fn fail(&mut self, why: &str) {
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            if self.send(&Head::error(why), b"").await.is_ok() {
                let _ = self.writer.shutdown().await;
                let mut sink = vec![0u8; 64 * 1024];
                while matches!(self.reader.get_mut().read(&mut sink).await, Ok(n) if n > 0) {}
            }
        })
        .await;
    }

    async fn fatal(&mut self, why: String) -> Outcome {
        self.fail(&why).await;
        Outcome::Close(CloseReason::Failed(why))
    }

    async fn request(&mut self, head: Head) -> Outcome {
        if head.len > 0 && head.op != Op::Data {
            // Requests carry no body; one that does is skipped rather than misread.
            if let Err(e) = self.reader.skip(head.len).await {
                return Outcome::Close(wire_reason(e));
            }
        }
        match head.op {
            Op::Put => self.put(head).await,
            Op::Get => self.get(head).await,
            Op::List => self.list().await,
            op => {
                self.fatal(format!(
                    "expected a put, get or list request, got {}",
                    serde_json::to_string(&op).unwrap_or_default()
                ))
                .await
            }
        }
    }

    fn reserve(&self) -> Option<Reserved> {
        let budget = self.ctx.budget.clone();
        budget
            .try_take_large(TRANSFER_MEMORY)
            .then(|| Reserved(budget))
    }

    async fn put(&mut self, head: Head) -> Outcome {
        let config = self.inner.config.clone();
        if config.read_only {
            return self
                .refuse("this server is read-only: uploads are refused")
                .await;
        }
        let raw_name = head.name.clone().unwrap_or_default();
        let name = match FileName::parse(&raw_name, true) {
            Ok(name) => name,
            Err(e) => return self.refuse(format!("bad name: {e}")).await,
        };
        let Some(size) = head.size else {
            return self.refuse("a put needs the file's size").await;
        };
        if size > config.max_file_size {
            return self
                .refuse(format!(
                    "{name} is {size} bytes, over the server's limit of {} bytes",
                    config.max_file_size
                ))
                .await;
        }
        let identity = head.blake3.as_ref().map(|h| h.to_ascii_lowercase());
        let Some(_name_claim) = self.inner.claim(format!("n:{name}")) else {
            return self
                .refuse(format!("{name} is being uploaded by another connection"))
                .await;
        };
        let Some(_memory) = self.reserve() else {
            return self
                .refuse("server busy (memory budget full), try again later")
                .await;
        };
        let inner = self.inner.clone();
        let (n, id) = (name.clone(), identity.clone());
        let begun = tokio::task::spawn_blocking(move || {
            inner.store.begin(&n, size, id.as_deref(), config.overwrite)
        })
        .await;
        let partial = match begun {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return self.refuse(e.to_string()).await,
            Err(e) => return self.refuse(format!("cannot start the upload: {e}")).await,
        };
        let Some(_part_claim) = self.inner.claim(format!("p:{}", partial.part_name())) else {
            return self
                .refuse(format!("{name} is being uploaded by another connection"))
                .await;
        };
        self.receive(name, size, partial, head.mtime).await
    }

    /// Offers a resume point, agrees on the offset, then receives the data frames.
    async fn receive(
        &mut self,
        name: FileName,
        size: u64,
        partial: Partial,
        mtime: Option<f64>,
    ) -> Outcome {
        let peer = self.ctx.peer.addr.clone();
        let file = match partial.file.try_clone() {
            Ok(f) => f,
            Err(e) => {
                return self
                    .refuse(format!("cannot open the partial file: {e}"))
                    .await;
            }
        };
        let (file, prefix) = match hash_prefix(file, partial.len).await {
            Ok(x) => x,
            Err(e) => {
                return self
                    .refuse(format!("cannot read the partial file: {e}"))
                    .await;
            }
        };
        let mut ok = Head::new(Op::Ok);
        ok.name = Some(name.to_string());
        ok.size = Some(size);
        ok.offset = Some(partial.len);
        if partial.len > 0 {
            ok.prefix_blake3 = Some(prefix.clone().finalize().to_hex().to_string());
        }
        if let Err(e) = self.send(&ok, b"").await {
            return Outcome::Close(CloseReason::Io(e));
        }
        let mut offset = partial.len;
        let mut hasher = prefix;
        if partial.len > 0 {
            let answer = match self.reader.head().await {
                Ok(Some(h)) => h,
                Ok(None) => return Outcome::Close(CloseReason::PeerClosed),
                Err(e) => return Outcome::Close(wire_reason(e)),
            };
            self.frames_in += 1;
            match (answer.op, answer.offset) {
                (Op::Resume, Some(o)) if o == partial.len => {}
                (Op::Resume, Some(0)) => {
                    if let Err(e) = file.set_len(0) {
                        return self.fatal(format!("cannot restart the upload: {e}")).await;
                    }
                    offset = 0;
                    hasher = blake3::Hasher::new();
                }
                (Op::Error, _) => {
                    return Outcome::Close(CloseReason::Failed(format!(
                        "client gave up: {}",
                        answer.message.unwrap_or_default()
                    )));
                }
                _ => {
                    return self
                        .fatal(format!(
                            "expected resume with offset 0 or {} after the offer",
                            partial.len
                        ))
                        .await;
                }
            }
        }
        let mut file = file;
        if let Err(e) = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)) {
            return self
                .fatal(format!("cannot seek the partial file: {e}"))
                .await;
        }
        let started = Instant::now();
        let bar = self.inner.bar(size, name.as_str());
        bar.set_position(offset);
        let mut sink = Sink::spawn(Target::File(file), hasher, false);
        let want = size - offset;
        let mut got = 0u64;
        self.reader.set_timeout(self.ctx.frame_timeout);
        let ended: Result<Head, String> = loop {
            let head = match self.reader.head().await {
                Ok(Some(h)) => h,
                Ok(None) => break Err("the client closed the connection".into()),
                Err(e) => break Err(e.to_string()),
            };
            self.frames_in += 1;
            match head.op {
                Op::Data => {
                    if head.len > CHUNK as u64 {
                        break Err(format!(
                            "a data frame of {} bytes is over the 1 MiB limit",
                            head.len
                        ));
                    }
                    if got + head.len > want {
                        break Err(format!(
                            "more data than announced: {} bytes for a file of {size}",
                            offset + got + head.len
                        ));
                    }
                    let mut buf = sink.buffer().await;
                    if let Err(e) = self.reader.body(head.len as usize, &mut buf).await {
                        break Err(e.to_string());
                    }
                    self.bytes_in += head.len;
                    got += head.len;
                    bar.inc(head.len);
                    if let Err(e) = sink.push(buf).await {
                        break Err(format!("cannot write {name}: {e}"));
                    }
                }
                Op::End => break Ok(head),
                Op::Error => {
                    break Err(format!(
                        "the client gave up: {}",
                        head.message.unwrap_or_default()
                    ));
                }
                op => break Err(format!("expected data or end, got {op:?}")),
            }
        };
        bar.finish_and_clear();
        let written = sink.finish().await;
        let end = match ended {
            Ok(end) => end,
            Err(why) => {
                // The data received so far stays in the partial file for a resume.
                let kept = offset + written.as_ref().map(|w| w.bytes).unwrap_or(0);
                warn!(
                    "{peer}: upload of {name} stopped at byte {kept} of {size} (kept for resume): {why}"
                );
                return self.fatal(why).await;
            }
        };
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                partial.discard();
                return self.fatal(format!("cannot write {name}: {e}")).await;
            }
        };
        if got != want {
            partial.discard();
            return self
                .fatal(format!(
                    "size mismatch: {name} was announced as {size} bytes, {} arrived",
                    offset + got
                ))
                .await;
        }
        let hash = written.hasher.finalize().to_hex().to_string();
        match end.blake3.as_deref().map(str::to_ascii_lowercase) {
            Some(h) if h == hash => {}
            Some(h) => {
                partial.discard();
                warn!("{peer}: upload of {name} is corrupt: blake3 {hash}, sender said {h}");
                return self
                    .fatal(format!(
                        "blake3 mismatch for {name}: received {hash}, sender has {h}; \
                         the upload was discarded"
                    ))
                    .await;
            }
            None => {
                partial.discard();
                return self.fatal("the end frame carries no blake3".into()).await;
            }
        }
        let overwrite = self.inner.config.overwrite;
        let mtime = mtime
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| UNIX_EPOCH + Duration::from_secs_f64(t.min(1e11)));
        let committed = tokio::task::spawn_blocking(move || partial.commit(overwrite, mtime)).await;
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return self.refuse(e.to_string()).await,
            Err(e) => return self.refuse(format!("cannot finish the upload: {e}")).await,
        }
        info!(
            "{peer}: {}",
            summary(
                "received",
                name.as_str(),
                got,
                started.elapsed(),
                &hash,
                offset
            )
        );
        let mut ok = Head::new(Op::Ok);
        ok.name = Some(name.to_string());
        ok.size = Some(size);
        ok.blake3 = Some(hash);
        match self.send(&ok, b"").await {
            Ok(()) => Outcome::Next,
            Err(e) => Outcome::Close(CloseReason::Io(e)),
        }
    }

    async fn get(&mut self, head: Head) -> Outcome {
        let raw_name = head.name.clone().unwrap_or_default();
        let name = match FileName::parse(&raw_name, true) {
            Ok(name) => name,
            Err(e) => return self.refuse(format!("bad name: {e}")).await,
        };
        let Some(_memory) = self.reserve() else {
            return self
                .refuse("server busy (memory budget full), try again later")
                .await;
        };
        let inner = self.inner.clone();
        let n = name.clone();
        let opened = tokio::task::spawn_blocking(move || inner.store.open_file(&n)).await;
        let (file, info) = match opened {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return self.refuse(e.to_string()).await,
            Err(e) => return self.refuse(format!("cannot open {name}: {e}")).await,
        };
        let offset = head.offset.unwrap_or(0);
        if offset > info.size {
            return self
                .refuse(format!(
                    "offset {offset} is past the end of {name} ({} bytes)",
                    info.size
                ))
                .await;
        }
        let (file, hasher) = match hash_prefix(file, offset).await {
            Ok(x) => x,
            Err(e) => return self.refuse(format!("cannot read {name}: {e}")).await,
        };
        let mut ok = Head::new(Op::Ok);
        ok.name = Some(name.to_string());
        ok.size = Some(info.size);
        ok.offset = Some(offset);
        ok.mtime = Some(mtime_secs(info.mtime));
        if offset > 0 {
            ok.prefix_blake3 = Some(hasher.clone().finalize().to_hex().to_string());
        }
        if let Err(e) = self.send(&ok, b"").await {
            return Outcome::Close(CloseReason::Io(e));
        }
        let started = Instant::now();
        let bar = self.inner.bar(info.size, name.as_str());
        bar.set_position(offset);
        let mut source = Source::spawn(file, offset, info.size, hasher);
        let data = Head::new(Op::Data);
        while let Some(chunk) = source.next().await {
            if let Err(e) = self.send(&data, &chunk).await {
                bar.finish_and_clear();
                return Outcome::Close(CloseReason::Io(e));
            }
            bar.inc(chunk.len() as u64);
            source.recycle(chunk);
        }
        bar.finish_and_clear();
        let hash = match source.finish().await {
            Ok(h) => h.to_hex().to_string(),
            Err(e) => return self.fatal(format!("cannot read {name}: {e}")).await,
        };
        let mut end = Head::new(Op::End);
        end.blake3 = Some(hash.clone());
        if let Err(e) = self.send(&end, b"").await {
            return Outcome::Close(CloseReason::Io(e));
        }
        info!(
            "{}: {}",
            self.ctx.peer.addr,
            summary(
                "sent",
                name.as_str(),
                info.size - offset,
                started.elapsed(),
                &hash,
                offset
            )
        );
        Outcome::Next
    }

    async fn list(&mut self) -> Outcome {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::files::Entry>(256);
        let inner = self.inner.clone();
        let walk = tokio::task::spawn_blocking(move || {
            inner.store.list(|entry| tx.blocking_send(entry).is_ok())
        });
        if let Err(e) = self.send(&Head::new(Op::Ok), b"").await {
            return Outcome::Close(CloseReason::Io(e));
        }
        let data = Head::new(Op::Data);
        let mut body = Vec::with_capacity(LIST_FRAME + 1024);
        while let Some(entry) = rx.recv().await {
            let line = serde_json::json!({
                "name": entry.name,
                "size": entry.info.size,
                "mtime": mtime_secs(entry.info.mtime),
            });
            if serde_json::to_writer(&mut body, &line).is_err() {
                continue;
            }
            body.push(b'\n');
            if body.len() >= LIST_FRAME {
                if let Err(e) = self.send(&data, &body).await {
                    return Outcome::Close(CloseReason::Io(e));
                }
                body.clear();
            }
        }
        if !body.is_empty() {
            if let Err(e) = self.send(&data, &body).await {
                return Outcome::Close(CloseReason::Io(e));
            }
        }
        let count = match walk.await {
            Ok(Ok(count)) => count,
            Ok(Err(e)) => return self.fatal(e.to_string()).await,
            Err(e) => return self.fatal(format!("listing failed: {e}")).await,
        };
        let mut end = Head::new(Op::End);
        end.count = Some(count);
        match self.send(&end, b"").await {
            Ok(()) => Outcome::Next,
            Err(e) => Outcome::Close(CloseReason::Io(e)),
        }
    }

    /// Writes an unframed text receipt (the tutorials' clients `recv(1024)` it).
    async fn receipt(&mut self, text: &str) -> io::Result<()> {
        let line = format!("{text}\n");
        self.writer.write_all(line.as_bytes()).await?;
        self.bytes_out += line.len() as u64;
        self.frames_out += 1;
        Ok(())
    }

    /// A refused tutorial upload: the receipt, then drain (the client is already streaming).
    async fn tutorial_refuse(&mut self, why: String) -> CloseReason {
        warn!("{}: tutorial upload refused: {why}", self.ctx.peer.addr);
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            if self.receipt(&format!("error: {why}")).await.is_ok() {
                let _ = self.writer.shutdown().await;
                let mut sink = vec![0u8; 64 * 1024];
                while matches!(self.reader.get_mut().read(&mut sink).await, Ok(n) if n > 0) {}
            }
        })
        .await;
        CloseReason::Failed(why)
    }

    /// The tutorials' upload scheme: header, raw body, text receipt; repeated while the client
    /// sends more headers.
    async fn tutorial(&mut self, mut map: Map<String, Value>) -> CloseReason {
        loop {
            let reason = self.tutorial_one(&map).await;
            if let Some(reason) = reason {
                return reason;
            }
            map = match self.reader.head_map().await {
                Ok(Some(map)) => map,
                Ok(None) => return CloseReason::PeerClosed,
                Err(e) => return self.tutorial_refuse(e.to_string()).await,
            };
            self.frames_in += 1;
        }
    }

    async fn tutorial_one(&mut self, map: &Map<String, Value>) -> Option<CloseReason> {
        let field = |keys: &[&str]| keys.iter().find_map(|k| map.get(*k));
        let Some(raw_name) = field(&["file_name", "filename", "name"]).and_then(Value::as_str)
        else {
            return Some(
                self.tutorial_refuse("the header has no file_name (or filename)".into())
                    .await,
            );
        };
        let Some(size) = field(&["file_size", "filesize", "size"]).and_then(Value::as_u64) else {
            return Some(
                self.tutorial_refuse(
                    "the header has no file_size (or filesize) as a whole number".into(),
                )
                .await,
            );
        };
        let md5 = match field(&["md5", "file_md5"]) {
            None => None,
            Some(Value::String(s)) if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Some(_) => {
                return Some(
                    self.tutorial_refuse("md5 must be 32 hex digits".into())
                        .await,
                );
            }
        };
        let config = self.inner.config.clone();
        if config.read_only {
            return Some(
                self.tutorial_refuse("this server is read-only".into())
                    .await,
            );
        }
        let name = match FileName::parse(raw_name, false) {
            Ok(n) => n,
            Err(e) => return Some(self.tutorial_refuse(format!("bad name: {e}")).await),
        };
        if size > config.max_file_size {
            return Some(
                self.tutorial_refuse(format!(
                    "{name} is {size} bytes, over the server's limit of {} bytes",
                    config.max_file_size
                ))
                .await,
            );
        }
        let Some(_claim) = self.inner.claim(format!("n:{name}")) else {
            return Some(
                self.tutorial_refuse(format!("{name} is being uploaded by another connection"))
                    .await,
            );
        };
        let Some(_memory) = self.reserve() else {
            return Some(
                self.tutorial_refuse("server busy, try again later".into())
                    .await,
            );
        };
        let inner = self.inner.clone();
        let n = name.clone();
        let begun = tokio::task::spawn_blocking(move || {
            inner.store.begin(&n, size, None, config.overwrite)
        })
        .await;
        let partial = match begun {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Some(self.tutorial_refuse(e.to_string()).await),
            Err(e) => return Some(self.tutorial_refuse(format!("cannot start: {e}")).await),
        };
        let Some(_part_claim) = self.inner.claim(format!("p:{}", partial.part_name())) else {
            return Some(
                self.tutorial_refuse(format!("{name} is being uploaded by another connection"))
                    .await,
            );
        };
        // This scheme cannot resume: start the partial file over.
        let file = match partial
            .file
            .try_clone()
            .and_then(|f| f.set_len(0).map(|()| f))
        {
            Ok(f) => f,
            Err(e) => {
                return Some(
                    self.tutorial_refuse(format!("cannot write {name}: {e}"))
                        .await,
                );
            }
        };
        let started = Instant::now();
        let bar = self.inner.bar(size, name.as_str());
        let mut sink = Sink::spawn(Target::File(file), blake3::Hasher::new(), md5.is_some());
        let mut left = size;
        let mut failed = None;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let mut buf = sink.buffer().await;
            buf.clear();
            buf.resize(n, 0);
            if let Err(e) = self.reader.raw(&mut buf).await {
                failed = Some(format!("{e} ({} of {size} bytes received)", size - left));
                break;
            }
            self.bytes_in += n as u64;
            left -= n as u64;
            bar.inc(n as u64);
            if let Err(e) = sink.push(buf).await {
                failed = Some(format!("cannot write {name}: {e}"));
                break;
            }
        }
        bar.finish_and_clear();
        let written = sink.finish().await;
        if let Some(why) = failed {
            partial.discard();
            return Some(self.tutorial_refuse(why).await);
        }
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                partial.discard();
                return Some(
                    self.tutorial_refuse(format!("cannot write {name}: {e}"))
                        .await,
                );
            }
        };
        if let (Some(want), Some(got)) = (&md5, written.md5) {
            let got: String = got.iter().map(|b| format!("{b:02x}")).collect();
            if *want != got {
                partial.discard();
                return Some(
                    self.tutorial_refuse(format!(
                        "md5 mismatch for {name}: received {got}, header says {want}; discarded"
                    ))
                    .await,
                );
            }
        }
        let hash = written.hasher.finalize().to_hex().to_string();
        let overwrite = config.overwrite;
        match tokio::task::spawn_blocking(move || partial.commit(overwrite, None)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(self.tutorial_refuse(e.to_string()).await),
            Err(e) => return Some(self.tutorial_refuse(format!("cannot finish: {e}")).await),
        }
        info!(
            "{}: {}",
            self.ctx.peer.addr,
            summary("received", name.as_str(), size, started.elapsed(), &hash, 0)
        );
        let receipt = format!("ok: received {name} ({size} bytes, blake3 {hash})");
        match self.receipt(&receipt).await {
            Ok(()) => None,
            Err(e) => Some(CloseReason::Io(e)),
        }
    }
}

enum Request {
    Head(Head),
    Tutorial(Map<String, Value>),
}
