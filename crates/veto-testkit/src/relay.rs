//! A fault-injecting TCP relay: clients connect to the relay, the relay
//! connects to a target and copies bytes both ways until told to fail.
//!
//! The faults are the ones networks really produce:
//! - [`Fault::Partition`]: nothing crosses in either direction, on open or
//!   new connections, and nothing is closed — a new connection is accepted
//!   but never reaches the target; senders see silence, not an error.
//! - [`Fault::HalfOpen`]: the connections open now go silent without a FIN
//!   or RST (a peer that vanished); new connections work.
//! - [`Fault::Reset`]: every open connection is closed and new ones are
//!   closed as soon as they are accepted.
//!
//! [`Relay::heal`] lets traffic flow again: silent connections resume
//! (bytes held back are delivered, as TCP would after a partition heals).

#![allow(
    clippy::expect_used,
    reason = "a test kit: a relay that cannot bind fails the test at that step"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Bytes flow.
    None,
    /// Nothing flows on any connection; nothing is closed.
    Partition,
    /// Connections older than this fault go silent; new ones flow.
    HalfOpen,
    /// Open connections are closed, new ones closed on accept.
    Reset,
}

/// The relay's state as its connections see it: the fault and the
/// generation in which it was set (connections remember their own).
#[derive(Clone, Copy, Debug)]
struct Mode {
    fault: Fault,
    /// Connections opened before this generation are "old".
    generation: u64,
}

/// A running relay; stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a loopback port and relays to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (mode, rx) = watch::channel(Mode {
            fault: Fault::None,
            generation: 0,
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let rx = rx.clone();
                tokio::spawn(connection(client, target, rx));
            }
        });
        Self {
            addr,
            mode,
            accepted,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` of the relay.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Injects `fault` (or, with [`Fault::None`], heals).
    pub fn set(&self, fault: Fault) {
        self.mode.send_modify(|m| {
            m.fault = fault;
            m.generation += 1;
        });
    }

    /// Lets traffic flow again.
    pub fn heal(&self) {
        self.set(Fault::None);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a connection born in `born` may move bytes under `mode`, or
/// must close (`None`).
fn flows(mode: Mode, born: u64) -> Option<bool> {
    match mode.fault {
        Fault::None => Some(true),
        Fault::Partition => Some(false),
        Fault::HalfOpen => Some(born >= mode.generation),
        Fault::Reset => None,
    }
}

/// Waits until this connection may flow; false when it must close.
async fn until_flowing(rx: &mut watch::Receiver<Mode>, born: u64) -> bool {
    loop {
        let mode = *rx.borrow_and_update();
        match flows(mode, born) {
            None => return false,
            Some(true) => return true,
            Some(false) => {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

async fn connection(client: TcpStream, target: SocketAddr, mut rx: watch::Receiver<Mode>) {
    let born = rx.borrow().generation;
    // Under a partition even the connect waits, as a SYN would.
    if !until_flowing(&mut rx, born).await {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction ending (EOF, error or reset) ends both.
    tokio::select! {
        _ = pump(cr, sw, rx.clone(), born) => {}
        _ = pump(sr, cw, rx, born) => {}
    }
}

/// Copies `from` to `to` while the mode lets this connection flow; holds
/// still (reading nothing, closing nothing) while it does not.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<Mode>,
    born: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !until_flowing(&mut rx, born).await {
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // A fault set while these bytes were in flight holds them.
                if !until_flowing(&mut rx, born).await {
                    return;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
