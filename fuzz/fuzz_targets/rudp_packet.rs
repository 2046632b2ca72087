//! Feeds arbitrary bytes to the rudp packet parser, to an endpoint (as datagrams from two
//! addresses) and to an established client connection, behind both a raw and a valid header:
//! nothing may panic, and a parsed `DATA` packet's frames must stay inside the datagram.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sockit::rudp::packet;
use sockit::rudp::sim::{LinkConfig, Pair};
use sockit::rudp::{Config, EndpointConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet::Packet::Data { frames, .. }) = packet::parse(data) {
        let mut total = 0usize;
        for f in packet::frames(frames) {
            if let packet::Frame::Frag { data: d, .. } = f {
                total += d.len();
            }
        }
        assert!(total <= data.len());
    }
    let mut p = Pair::new(
        Config::default(),
        EndpointConfig::default(),
        LinkConfig::default(),
        LinkConfig::default(),
        1,
    );
    if !p.connect(Duration::from_secs(5)) {
        return;
    }
    let now = p.now;
    let client_addr = p.client_addr;
    // Datagrams are separated by 0xfe bytes so one input can hold several.
    for chunk in data.split(|&b| b == 0xfe) {
        p.server.handle_datagram(now, client_addr, chunk);
        p.server
            .handle_datagram(now, "192.0.2.9:9".parse().unwrap(), chunk);
        p.client.handle_datagram(now, chunk);
        let mut b = Vec::new();
        packet::write_data_header(&mut b, p.client.remote_cid(), 0);
        b.extend_from_slice(chunk);
        p.server.handle_datagram(now, client_addr, &b);
        b.clear();
        packet::write_data_header(&mut b, p.client.local_cid(), 0);
        b.extend_from_slice(chunk);
        p.client.handle_datagram(now, &b);
    }
    p.run_for(Duration::from_secs(2));
});
