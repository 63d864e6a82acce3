//! Logs: `tracing` set-up (level from the config's `log.level`, `RUST_LOG` wins), request ids
//! and the optional access log.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

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

/// A new request id: 16 hex digits from a per-thread xorshift generator (seeded randomly per
/// thread), so ids do not repeat across restarts and cost no shared atomic.
pub fn new_request_id() -> HeaderValue {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            h.finish() | 1
        });
    }
    let n = STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    let mut hex = [0u8; 16];
    for (i, b) in hex.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[(n >> (60 - 4 * i)) as usize & 0xf];
    }
    HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
}

/// The request's id: the client's `x-request-id` when it is printable ASCII of at most 128
/// bytes, else a new one, which replaces it in `headers` (so plugins and the upstream see it).
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    let mut given = headers.get_all(&REQUEST_ID).iter();
    if let (Some(v), None) = (given.next(), given.next())
        && valid_id(v)
    {
        return v.clone();
    }
    let id = new_request_id();
    headers.insert(REQUEST_ID.clone(), id.clone());
    id
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
