//! File transfer over header framing: names ([`name`]), the served directory ([`store`]), the
//! wire format ([`wire`]), the overlapped disk side of a transfer ([`pipe`]) and the client
//! behind `sockit send`, `get` and `ls` ([`client`]). The server side is the `files` service
//! (`crate::service::files`). docs/PROTOCOL.md describes the conversation byte by byte.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub mod client;
pub mod name;
pub mod pipe;
pub mod store;
pub mod wire;

pub use name::{FileName, NameError};
pub use store::{Entry, FileInfo, Store, StoreError};

/// Default `--max-file-size`: 16 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 16 << 30;
/// Default time after which an abandoned partial upload is removed.
pub const DEFAULT_PARTIAL_TTL: Duration = Duration::from_secs(24 * 3600);

/// The one-line summary of a finished transfer:
/// `sent NAME: N bytes in S s, R MB/s, blake3 HASH`, plus where a resumed one started.
pub fn summary(
    verb: &str,
    name: &str,
    bytes: u64,
    elapsed: Duration,
    hash: &str,
    resumed_at: u64,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        bytes as f64 / secs / 1e6
    } else {
        0.0
    };
    let mut line =
        format!("{verb} {name}: {bytes} bytes in {secs:.2} s, {rate:.1} MB/s, blake3 {hash}");
    if resumed_at > 0 {
        line.push_str(&format!(" (resumed at byte {resumed_at})"));
    }
    line
}

/// A progress bar (bytes, rate, ETA) on stderr when `visible`, else one that draws nothing.
pub fn progress_bar(total: u64, label: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg:20!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_has_the_documented_shape() {
        let line = summary("sent", "a.txt", 2_000_000, Duration::from_secs(2), "ab", 0);
        assert_eq!(
            line,
            "sent a.txt: 2000000 bytes in 2.00 s, 1.0 MB/s, blake3 ab"
        );
        let line = summary("sent", "a", 1, Duration::ZERO, "ab", 7);
        assert!(line.ends_with("(resumed at byte 7)"), "{line}");
    }
}
