//! Memory held by an idle connection, measured with a counting global allocator: after a large
//! frame has been echoed, a connection waiting for its next message must give the memory back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use sockit::transport::FramedStream;
use sockit::{FrameCodec, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_returns_the_memory_of_a_large_frame() {
    const FRAME: usize = 4 * 1024 * 1024;
    let (server_end, mut client) = tokio::io::duplex(64 * 1024);
    let codec = FrameCodec::new("len32".parse().unwrap(), Limits::default());
    let mut conn = FramedStream::new(server_end, codec);

    let client_task = tokio::spawn(async move {
        let body = vec![7u8; FRAME];
        client
            .write_all(&(FRAME as u32).to_be_bytes())
            .await
            .unwrap();
        client.write_all(&body).await.unwrap();
        drop(body);
        let mut echoed = vec![0u8; 4 + FRAME];
        client.read_exact(&mut echoed).await.unwrap();
        client
    });

    let before = LIVE.load(Ordering::Relaxed);
    let msg = conn.read_message().await.unwrap().unwrap();
    assert_eq!(msg.len(), FRAME);
    conn.queue(&msg).unwrap();
    drop(msg);
    conn.flush(None).await.unwrap();
    let client = client_task.await.unwrap();

    conn.release_idle();
    let held = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        held < 256 * 1024,
        "an idle connection still holds {held} bytes after a {FRAME}-byte frame"
    );
    drop(client);
}
