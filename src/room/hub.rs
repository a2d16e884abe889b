//! The hub: the room state machine plus the I/O its effects need (each
//! connection's outgoing queue and the SFU). Signaling and admin handlers go
//! through it; every state change is followed by carrying out its effects.
//! [`AppState`] is what both handler sets share: the config and the hub.

use crate::protocol::ServerMessage;
use crate::room::sfu::Sfu;
use crate::room::state::{ConnId, Effect, RoomLimits, Rooms};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// A connection's outgoing queue, bounded: a client that does not read
/// is cut off (`cut` fires) rather than buffered without end.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<ServerMessage>,
    cut: Arc<tokio::sync::Notify>,
}

impl Outbox {
    /// The outbox, its receiving end, and what fires when it overflows.
    pub fn new(
        capacity: usize,
    ) -> (
        Outbox,
        mpsc::Receiver<ServerMessage>,
        Arc<tokio::sync::Notify>,
    ) {
        let (tx, rx) = mpsc::channel(capacity);
        let cut = Arc::new(tokio::sync::Notify::new());
        let outbox = Outbox {
            tx,
            cut: Arc::clone(&cut),
        };
        (outbox, rx, cut)
    }

    /// Queue `msg`; a full queue cuts the connection off.
    pub fn send(&self, msg: ServerMessage) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(msg) {
            self.cut.notify_one();
        }
    }
}

/// What the signaling and admin handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<crate::room::config::RoomConfig>,
    pub hub: SharedHub,
    pub caps: crate::room::accept::ConnectionCaps,
}

pub struct Hub {
    pub rooms: Rooms,
    conns: HashMap<ConnId, Outbox>,
    next_conn: ConnId,
    pub sfu: Sfu,
}

/// Shared handle. The lock is never held across an await.
#[derive(Clone)]
pub struct SharedHub(Arc<Mutex<Hub>>);

impl SharedHub {
    pub fn new(sfu: Sfu, limits: RoomLimits) -> Self {
        SharedHub(Arc::new(Mutex::new(Hub {
            rooms: Rooms::new(limits),
            conns: HashMap::new(),
            next_conn: 1,
            sfu,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding the lock is a bug; keep serving with the state as it is.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn sfu(&self) -> Sfu {
        self.lock().sfu.clone()
    }

    /// Change the room state and carry out the effects the change queued.
    pub fn update<T>(&self, f: impl FnOnce(&mut Rooms, &Sfu) -> T) -> T {
        let mut guard = self.lock();
        let hub = &mut *guard;
        let out = f(&mut hub.rooms, &hub.sfu);
        hub.flush();
        out
    }
}

impl Hub {
    pub fn connect(&mut self, outbox: Outbox) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, outbox);
        id
    }

    /// The connection closed: it leaves its room, its media stops.
    pub fn disconnect(&mut self, conn: ConnId) {
        let _ = self.rooms.leave(conn);
        self.conns.remove(&conn);
        self.sfu.close_conn(conn);
        self.flush();
    }

    pub fn send(&self, conn: ConnId, msg: ServerMessage) {
        if let Some(out) = self.conns.get(&conn) {
            out.send(msg);
        }
    }

    /// Carry out every effect the state machine queued.
    pub fn flush(&mut self) {
        while let Some(effect) = self.rooms.poll_effect() {
            match effect {
                Effect::Send(conn, msg) => self.send(conn, msg),
                Effect::CloseMedia(conn) => self.sfu.close_conn(conn),
                Effect::EndPublication(stream_id) => self.sfu.end_publication(stream_id),
                Effect::EndSubscription { conn, stream_id } => {
                    self.sfu.end_subscription(conn, stream_id)
                }
            }
        }
    }
}
