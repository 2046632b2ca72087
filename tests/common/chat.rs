//! A line-framed chat member, for the tests of one chat server and of a cluster.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::PATIENCE;

/// A line-framed chat member.
pub struct Member {
    /// The nick the welcome gave.
    pub nick: String,
    /// The server's lines.
    pub reader: BufReader<OwnedReadHalf>,
    /// Where lines go.
    pub writer: OwnedWriteHalf,
}

impl Member {
    /// Connects and reads the welcome line, which names the member's nick.
    pub async fn join(addr: SocketAddr) -> Member {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::welcomed(stream).await
    }

    /// Reads the welcome on a connected stream.
    pub async fn welcomed(stream: TcpStream) -> Member {
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        let mut member = Member {
            nick: String::new(),
            reader: BufReader::new(r),
            writer: w,
        };
        let welcome = member.line().await;
        member.nick = welcome
            .strip_prefix("* you are ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("not a welcome: {welcome:?}"))
            .to_owned();
        member
    }

    /// Sends one line.
    pub async fn send(&mut self, text: &str) {
        self.writer
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
    }

    /// The next line, without its ending; panics if none comes within [`PATIENCE`] or the
    /// connection ends.
    pub async fn line(&mut self) -> String {
        self.line_within(PATIENCE).await.unwrap_or_else(|| {
            panic!(
                "{}: no line within {PATIENCE:?} (or the connection closed)",
                self.nick
            )
        })
    }

    /// The next line, or `None` if none comes within `limit` or the connection ends.
    pub async fn line_within(&mut self, limit: Duration) -> Option<String> {
        let mut buf = Vec::new();
        match tokio::time::timeout(limit, self.reader.read_until(b'\n', &mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        Some(String::from_utf8(buf).expect("utf-8"))
    }
}
