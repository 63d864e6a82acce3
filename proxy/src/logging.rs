//! Logs: `tracing` set-up (level from the config's `log.level`, `RUST_LOG` wins), request ids
//! and the optional access log.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tracing::info;

/// Header carrying the request id to plugins (in their view), the upstream and the client.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client; a longer (or non-printable) one is replaced.
const MAX_ID_LEN: usize = 128;

/// Changes the log filter of the installed subscriber (a config reload's `log.level`).
type SetFilter = Box<dyn Fn(tracing_subscriber::EnvFilter) -> bool + Send + Sync>;
static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// Log lines queued for the stderr writer thread at most; when it is full (stderr stalled or
/// too slow) further lines are dropped and counted, never waited for.
pub const LOG_QUEUE_LINES: usize = 16_384;

static DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Log lines dropped because the stderr writer fell behind (`weft_log_lines_dropped_total`).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Keeps the stderr writer thread; dropping it writes out the lines still queued (for at
/// most about a second). Hold it until the process exits.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global `tracing` subscriber on stderr. `level` is the config's `log.level`;
/// `RUST_LOG`, when set, wins; the default is `info`.
///
/// Lines go through a bounded queue to a writer thread (`tracing-appender`, lossy): a request
/// thread never blocks on stderr, so a stalled pipe or terminal cannot stall the proxy; lines
/// that do not fit are dropped and counted ([`dropped_lines`]). `None` when a subscriber was
/// installed already.
pub fn init_tracing(level: Option<&str>) -> Option<LogGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| level.and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| "info".into());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("weft-log-writer")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_err() {
        return None;
    }
    let _ = SET_FILTER.set(Box::new(move |f| handle.reload(f).is_ok()));
    let _ = DROPPED.set(dropped);
    Some(guard)
}

/// Applies a reloaded config's `log.level` (default `info`), unless `RUST_LOG` is set (it wins).
pub fn reload_level(level: Option<&str>) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    let Some(set) = SET_FILTER.get() else { return };
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_new(level.unwrap_or("info")) {
        set(filter);
    }
}

fn valid_id(v: &HeaderValue) -> bool {
    !v.is_empty() && v.len() <= MAX_ID_LEN && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// Request ids a thread cuts from one buffer ([`new_request_id`]).
const IDS_PER_BLOCK: usize = 64;
const ID_LEN: usize = 16;

/// A new request id: 16 hex digits from a per-thread xorshift generator (seeded randomly per
/// thread), so ids do not repeat across restarts and cost no shared atomic.
///
/// The ids are written [`IDS_PER_BLOCK`] at a time into one buffer and each is a slice of it:
/// a value of its own was an allocation and a copy, and its first clone (one goes into the
/// request, one to the response) a second allocation (`Bytes` shares a buffer only once cloned):
/// 159 instructions a request fewer this way (`scripts/callgrind-proxy`). A slice and its clones
/// count references to the block, which is freed when its last id is.
pub fn new_request_id() -> HeaderValue {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            h.finish() | 1
        });
        static BLOCK: RefCell<(Bytes, usize)> = const { RefCell::new((Bytes::new(), 0)) };
    }
    let next = || {
        STATE.with(|s| {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        })
    };
    let id = BLOCK.with_borrow_mut(|(block, at)| {
        if *at == block.len() {
            let mut hex = Vec::with_capacity(IDS_PER_BLOCK * ID_LEN);
            for _ in 0..IDS_PER_BLOCK {
                let n = next();
                hex.extend((0..ID_LEN).map(|i| b"0123456789abcdef"[(n >> (60 - 4 * i)) as usize & 0xf]));
            }
            // Shared from the start (a `Vec`'s bytes become shareable on their first clone).
            *block = Bytes::from(hex).slice(..);
            *at = 0;
        }
        *at += ID_LEN;
        block.slice(*at - ID_LEN..*at)
    });
    HeaderValue::from_maybe_shared(id).expect("hex is a valid header value")
}

/// The request's id: the client's `x-request-id` when it is printable ASCII of at most 128
/// bytes, else a new one, which replaces it in `headers` (so plugins and the upstream see it).
///
/// One lookup for both the read and the write (an entry): a lookup and then an insert hashed the
/// name and probed twice (~100 instructions a request, `scripts/callgrind-proxy`).
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    match headers.entry(&REQUEST_ID) {
        http::header::Entry::Occupied(mut given) => {
            let mut values = given.iter();
            if let (Some(v), None) = (values.next(), values.next())
                && valid_id(v)
            {
                return v.clone();
            }
            let id = new_request_id();
            given.insert(id.clone());
            id
        }
        http::header::Entry::Vacant(slot) => slot.insert(new_request_id()).clone(),
    }
}

/// One access log line (target `weft::access`).
pub fn access(
    request_id: &HeaderValue,
    client: SocketAddr,
    method: &Method,
    uri: &Uri,
    route: &str,
    status: StatusCode,
    elapsed: Duration,
) {
    info!(
        target: "weft::access",
        request_id = %String::from_utf8_lossy(request_id.as_bytes()),
        %client,
        %method,
        uri = %uri,
        route,
        status = status.as_u16(),
        duration_us = elapsed.as_micros() as u64,
        "access"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_kept_or_made() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&mut h), "abc-123");

        let mut h = HeaderMap::new();
        let id = request_id(&mut h);
        assert_eq!(id.len(), 16);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        assert_eq!(h["x-request-id"], id);
        assert_ne!(request_id(&mut HeaderMap::new()), id);
        // Across blocks too: every id of three blocks differs from the others.
        let ids: std::collections::HashSet<_> = (0..3 * IDS_PER_BLOCK).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 3 * IDS_PER_BLOCK);
        assert!(
            ids.iter()
                .all(|id| id.len() == ID_LEN && id.as_bytes().iter().all(u8::is_ascii_hexdigit))
        );

        // Too long, not printable, or repeated: replaced by one new id.
        for bad in ["a".repeat(200), "a b".into()] {
            let mut h = HeaderMap::new();
            h.insert("x-request-id", HeaderValue::from_str(&bad).unwrap());
            let id = request_id(&mut h);
            assert_ne!(id, bad.as_str());
            assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        }
        let mut h = HeaderMap::new();
        h.append("x-request-id", HeaderValue::from_static("a"));
        h.append("x-request-id", HeaderValue::from_static("b"));
        request_id(&mut h);
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
    }
}
