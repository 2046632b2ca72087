//! `echo`: every message comes back unchanged, bytes and header alike.

use crate::message::Message;
use crate::service::{Outbox, PeerInfo, Service, Session};

/// The echo service.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

/// An echo connection: stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoSession;

impl Service for Echo {
    type Session = EchoSession;

    fn open(&self, _peer: &PeerInfo) -> EchoSession {
        EchoSession
    }
}

impl Session for EchoSession {
    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        out.send(msg);
    }
}
