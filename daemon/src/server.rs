//! The API's accept loop on its Unix socket: the peer's credentials are
//! taken per connection (SO_PEERCRED) and checked before any request is
//! served (a refused peer's one request is read and answered 403), then
//! requests are read and answered on a thread per connection, at most
//! [`MAX_CONNECTIONS`] at once.

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tandem::api::{ApiError, ErrorKind};

use crate::daemon::Daemon;
use crate::fleets::Fleets;
use crate::http::{read_request, write_answer, Answer, ReadError};
use crate::peer::{allowed, peer_of, Access, Peer};

/// Connections served at once; more are answered 503.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection idle this long between requests is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `listener` for ever.
pub fn serve(listener: UnixListener, d: Arc<Daemon>, fleets: Arc<Fleets>, access: Access) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let peer = match peer_of(&conn) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("SO_PEERCRED: {e}");
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let e = ApiError::new(ErrorKind::Unavailable, "too many connections; try again");
            let _ = write_answer(&mut conn, &Answer::error(&e), false);
            continue;
        }
        let d = d.clone();
        let fleets = fleets.clone();
        let open = open.clone();
        let spawned = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                if allowed(&peer, access) {
                    connection(conn, &d, &fleets);
                } else {
                    refuse(conn, &peer);
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a connection thread: {e}");
        }
    }
}

/// Answers a peer that may not talk 403, after reading its request (a
/// close with the request unread would reset the connection instead).
fn refuse(mut conn: UnixStream, peer: &Peer) {
    log::warn!("refused uid {} (pid {}): not allowed", peer.uid, peer.pid);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = read_request(&mut conn, &mut Vec::new());
    let e = ApiError::new(
        ErrorKind::Forbidden,
        format!(
            "uid {} may not use this daemon (allowed: root, the daemon's uid, the --group)",
            peer.uid
        ),
    );
    let _ = write_answer(&mut conn, &Answer::error(&e), false);
}

fn connection(mut conn: UnixStream, d: &Daemon, fleets: &Fleets) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let mut buf = Vec::new();
    loop {
        let req = match read_request(&mut conn, &mut buf) {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(ReadError::Io(e)) => {
                log::debug!("API connection: {e}");
                return;
            }
            Err(ReadError::Refused(e)) => {
                let _ = write_answer(&mut conn, &Answer::error(&e), false);
                return;
            }
        };
        let a = crate::api::answer(d, fleets, &req);
        log::debug!("{} {} -> {}", req.head.method, req.head.path, a.status);
        if write_answer(&mut conn, &a, req.head.keep_alive).is_err() || !req.head.keep_alive {
            return;
        }
    }
}
