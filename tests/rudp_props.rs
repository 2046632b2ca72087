//! Property tests: random and mutated datagrams never panic the rudp core or endpoint, and
//! never stall the simulation.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use sockit::rudp::packet;
use sockit::rudp::sim::{Dir, LinkConfig, Pair};
use sockit::rudp::{Config, EndpointConfig, Event};

const SEED: u64 = 99;

fn link() -> LinkConfig {
    LinkConfig {
        loss: 0.1,
        delay_min: Duration::from_millis(5),
        delay_max: Duration::from_millis(15),
        ..LinkConfig::default()
    }
}

fn connected() -> Pair {
    let mut p = Pair::new(
        Config::default(),
        EndpointConfig::default(),
        link(),
        link(),
        SEED,
    );
    assert!(p.connect(Duration::from_secs(20)));
    p
}

/// Every datagram of a short exchange between the same deterministic pair the tests use
/// (same seed, so the same connection ids), to mutate.
fn captured() -> &'static [(Dir, Vec<u8>)] {
    static CAP: std::sync::OnceLock<Vec<(Dir, Vec<u8>)>> = std::sync::OnceLock::new();
    CAP.get_or_init(|| {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut p = Pair::new(
            Config::default(),
            EndpointConfig::default(),
            link(),
            link(),
            SEED,
        );
        let l = log.clone();
        p.filter = Some(Box::new(move |d, b| {
            l.borrow_mut().push((d, b.to_vec()));
            false
        }));
        assert!(p.connect(Duration::from_secs(20)));
        let h = p.server_conn.unwrap();
        for i in 0..20u32 {
            p.client
                .send(Bytes::from(vec![i as u8; 10 + 300 * i as usize]))
                .unwrap();
            p.server.send(h, Bytes::from(vec![i as u8; 50])).unwrap();
        }
        p.client.close();
        p.run_for(Duration::from_secs(5));
        log.take()
    })
}

/// After the abuse, the pair must still run without getting stuck (the simulator asserts
/// progress) and without panicking.
fn settle(p: &mut Pair) {
    if let Some(h) = p.server_conn {
        let _ = p.server.send(h, Bytes::from_static(b"after"));
    }
    let _ = p.client.send(Bytes::from_static(b"after"));
    p.run_for(Duration::from_secs(3));
    while p.server.poll_event().is_some() {}
    while p.client.poll_event().is_some() {}
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_datagrams_never_panic(
        dgs in prop::collection::vec((0u8..5, prop::collection::vec(any::<u8>(), 0..1400)), 1..40)
    ) {
        let mut p = connected();
        let now = p.now;
        let client_addr = p.client_addr;
        let server_cid = p.client.remote_cid();
        let client_cid = p.client.local_cid();
        for (target, d) in dgs {
            match target {
                0 => { p.server.handle_datagram(now, client_addr, &d); }
                1 => { p.server.handle_datagram(now, "10.1.2.3:4".parse().unwrap(), &d); }
                2 => p.client.handle_datagram(now, &d),
                // Garbage frames behind a valid header reach the frame handlers.
                3 => {
                    let mut b = Vec::new();
                    packet::write_data_header(&mut b, server_cid, 0);
                    b.extend_from_slice(&d);
                    p.server.handle_datagram(now, client_addr, &b);
                }
                _ => {
                    let mut b = Vec::new();
                    packet::write_data_header(&mut b, client_cid, 0);
                    b.extend_from_slice(&d);
                    p.client.handle_datagram(now, &b);
                }
            }
        }
        settle(&mut p);
    }

    #[test]
    fn mutated_valid_datagrams_never_panic(
        picks in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)),
            1..30,
        )
    ) {
        let cap = captured();
        prop_assume!(!cap.is_empty());
        let mut p = connected();
        let client_addr = p.client_addr;
        for (which, flips) in picks {
            let (dir, orig) = &cap[which.index(cap.len())];
            let mut d = orig.clone();
            if d.is_empty() {
                continue;
            }
            for (at, x) in flips {
                let i = at.index(d.len());
                d[i] ^= x | 1;
            }
            let now = p.now;
            match dir {
                Dir::Up => { p.server.handle_datagram(now, client_addr, &d); }
                Dir::Down => p.client.handle_datagram(now, &d),
            }
            p.run_for(Duration::from_millis(7));
        }
        settle(&mut p);
    }

    #[test]
    fn valid_sequences_of_absurd_acks_never_panic(
        acks in prop::collection::vec(
            (any::<u32>(), any::<u16>(), any::<u8>(), any::<u16>(),
             prop::collection::vec((any::<u32>(), any::<u32>()), 0..6)),
            1..20,
        )
    ) {
        let mut p = connected();
        let h = p.server_conn.unwrap();
        for i in 0..10u8 {
            p.server.send(h, Bytes::from(vec![i; 2000])).unwrap();
        }
        p.flush();
        let client_cid = p.client.local_cid();
        for (cum, ts, delay, wnd, ranges) in acks {
            let mut b = Vec::new();
            packet::write_data_header(&mut b, p.client.remote_cid(), ts);
            packet::write_ack(&mut b, cum, ts, delay, wnd, &ranges);
            let now = p.now;
            p.server.handle_datagram(now, p.client_addr, &b);
            let mut c = Vec::new();
            packet::write_data_header(&mut c, client_cid, ts);
            packet::write_ack(&mut c, cum, ts, delay, wnd, &ranges);
            p.client.handle_datagram(now, &c);
            p.run_for(Duration::from_millis(3));
        }
        settle(&mut p);
        let _ = p.server_events.iter().filter(|(_, e)| matches!(e, Event::Closed(_))).count();
    }
}
