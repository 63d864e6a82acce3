//! One proxied request as a sequence of named stages ([`Proxy::route_request`]): check the head,
//! route, request phases, request body, forward, response phases, response body. Each stage
//! either hands the request on or ends it with a response (`Err(reply)`); a reply built after
//! the plugin chain started carries the exchange, so the log phase still runs when it is sent.
// An early answer (`Err(reply)`) is a normal outcome of a stage, not a rare failure: boxing it to
// shrink the `Result` would add an allocation to every such answer.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version, header};
use hyper::body::Body as _;
use tracing::{debug, warn};
use weft_runtime::abi::WeftPhase;
use weft_runtime::view::ClientAddr;
use weft_runtime::{BodyMode, BodySide, BufferedBody, Flow};

use crate::body::{CollectError, Keep, Pieces, PluginBody, UpstreamBody, collect_limited};
use crate::conn::{Peer, RequestBody};
use crate::forward::{
    ClientIp, Forwarding, ProxyBody, Seen, add_forwarding_headers, check_host, join_cookies, local_reply, pin_host,
    strip_hop_by_hop, strip_seen_hop_by_hop, untrusted_forwarding, upstream_uri,
};
use crate::h1::head::Fields;
use crate::h1::lines::{HeadLines as _, Lines, LinesHead};
use crate::proxy::{Proxy, RouteTarget};
use crate::route::{Found, normalize_host};
use crate::server::error_chain;
use crate::tls::server::TlsInfo;
use crate::upstream::{Outbound, Pick, ResponseBody, UpstreamError};
use crate::ws::ClientUpgrade;

/// A response that ends the request now.
type Reply = Response<ProxyBody>;
/// A stage's outcome: go on with `T`, or answer with the reply.
type Step<T> = Result<T, Reply>;

/// What the stages after routing share.
struct Flight<'a> {
    route: &'a RouteTarget,
    /// The route's plugin exchange (one arena slot); `None` for a route without plugins, and
    /// from the request body on for a chain with no phase after the request headers.
    exchange: Option<Keep>,
    request_id: &'a HeaderValue,
}

impl Proxy {
    /// Runs the stages of one request, whose head and body the caller holds (`Some` both); an
    /// error is a response too. `matched` gets the route (for metrics and the access log) once
    /// one is found.
    // Order: check the host, normalise the path, strip hop-by-hop, join cookies, pin `host`,
    // route, run plugins, then set the forwarding headers. Plugins see the end-to-end head the
    // client sent (normalised path, `host` filled in for HTTP/2) and can rewrite it, but not
    // `host`, the forwarding headers or hop-by-hop ones (`mutation.rs` refuses them); the
    // forwarding headers are set after them.
    //
    // The request's head and body stay in the caller's future, taken from there where they move
    // on: a future holds what it is given for as long as it lives, so each level that took the
    // request by value held another copy of it in the request's future (moved whole into its
    // box per request).
    pub(crate) async fn stages<'a>(
        &'a self,
        head: &mut Option<Parts>,
        body_slot: &mut Option<RequestBody>,
        client: &'a Peer,
        request_id: &'a HeaderValue,
        matched: &mut Option<&'a RouteTarget>,
    ) -> Step<Reply> {
        const TAKEN: &str = "the request's head and body are taken once, where they move on";
        let parts = head.as_mut().expect(TAKEN);
        let (upgrade, host) = self.check_head(parts, request_id)?;
        let route = self.route(parts, host.as_ref())?;
        *matched = Some(route);
        let mut f = Flight {
            route,
            exchange: start_chain(route, &client.addr, parts)?,
            request_id,
        };
        let body_mode = f.request_phases(parts, &self.path_opts).await?;
        let upgrade = match (upgrade, &route.ws) {
            (Some(up), Some(ws)) => {
                let parts = head.take().expect(TAKEN);
                // Boxed: a rare path, kept out of every request's future.
                return Ok(Box::pin(crate::ws::serve_plugin(ws, parts, up, &client.addr)).await);
            }
            (up, _) => up,
        };
        f.release_if_done();
        let body = body_slot.take().expect(TAKEN);
        let body = match body_mode {
            _ if f.exchange.is_none() => UpstreamBody::Plain(body),
            BodyMode::None => UpstreamBody::Plain(body),
            // Boxed: the rare buffered path's state stays out of every request's future.
            BodyMode::Buffered => Box::pin(f.request_body_buffered(parts, body)).await?,
            // Boxed too: its call's future would be the largest of the request's (~1 KB).
            BodyMode::Streamed if body.is_end_stream() => Box::pin(f.request_body_empty(parts, body)).await?,
            BodyMode::Streamed => f.stream_request_body(parts, body),
        };
        // The response goes to an HTTP/1.1 client (the version is the client's until
        // `address_upstream`) and no plugin streams or buffers its body: its fields may stay as
        // the upstream's lines (the response-headers plugins read and change them there).
        let fields = match &route.chain {
            _ if parts.version != Version::HTTP_11 => Fields::Map,
            Some(chain) if chain.handles(WeftPhase::ResponseBody) => Fields::Map,
            _ => Fields::Lines,
        };
        let pick = self.address_upstream(parts, &client.ip, host.as_ref(), upgrade.is_some(), route);
        let Some((mut pick, forwarding)) = pick else {
            return Err(f.reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"));
        };
        let head_request = parts.method == Method::HEAD;
        // Boxed once here and handed down by pointer: every async fn of the upstream path keeps
        // its argument in the request's future, which is moved whole into its box per request.
        let req = Box::new(Request::from_parts(head.take().expect(TAKEN), body));
        let out = Outbound {
            fields,
            forwarding: forwarding.as_ref(),
            has_host: host.is_some(),
            upgrade: upgrade.is_some(),
        };
        let resp = f.forward(req, &mut pick, &client.upstream_timer, out).await?;
        let (mut parts, mut body) = upstream_head(resp, upgrade, route).into_parts();
        let mut lines = body.take_lines();
        let mode = f.response_phases(&mut parts, lines.as_deref_mut(), &mut body).await?;
        let addr = route.upstream.address(&pick);
        if f.exchange.is_none() {
            // No plugins, or none after the response head.
            return Ok(untouched(route, addr, parts, body, lines));
        }
        // Responses that cannot have a body never reach body plugins, whose responses' fields
        // were asked for as a map (the ask above: a chain with a response-body phase).
        let no_body = head_request || bodiless(parts.status);
        debug_assert!(mode == BodyMode::None || lines.is_none());
        Ok(match mode {
            // Boxed: the rare buffered path's state stays out of every request's future.
            BodyMode::Buffered if !no_body => Box::pin(f.buffered_response(parts, body, addr)).await,
            BodyMode::Streamed if !no_body => f.response_body(parts, body, addr, true, None),
            _ => f.response_body(parts, body, addr, false, lines),
        })
    }

    /// Refuses what cannot be proxied (CONNECT, a bad `Host`, a path that does not normalise),
    /// normalises the path, takes a WebSocket upgrade's headers aside, strips hop-by-hop
    /// headers, joins cookies and pins `host`; returns the upgrade and the host.
    fn check_head(
        &self,
        parts: &mut Parts,
        request_id: &HeaderValue,
    ) -> Step<(Option<ClientUpgrade>, Option<HeaderValue>)> {
        if parts.method == Method::CONNECT {
            return Err(local_reply(
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT is not supported",
                None,
            ));
        }
        let given_host = match check_host(parts.version, &parts.uri, &parts.headers) {
            Ok(host) => host,
            Err(e) => {
                debug!(?request_id, "refused: {}", e.message());
                return Err(local_reply(StatusCode::BAD_REQUEST, e.message(), None));
            }
        };
        if let Err(e) = normalize_uri(&mut parts.uri, &self.path_opts) {
            debug!(?request_id, "refused: {e}");
            return Err(local_reply(
                StatusCode::BAD_REQUEST,
                &format!("bad request path: {e}"),
                None,
            ));
        }
        // A WebSocket upgrade keeps its two hop-by-hop headers (put back before forwarding).
        // One pass over the names decides which of the next three steps have work.
        let seen = Seen::scan(&parts.headers);
        let upgrade = seen.may_upgrade().then(|| crate::ws::take_upgrade(parts)).flatten();
        strip_seen_hop_by_hop(&mut parts.headers, seen);
        if seen.cookie() {
            join_cookies(&mut parts.headers);
        }
        // `host` is not among what the steps between removed (`connection` cannot name it).
        let host = pin_host(&parts.uri, given_host, &mut parts.headers);
        Ok((upgrade, host))
    }

    /// The route for the normalised head: 404 without one, 405 when only the method differs.
    fn route(&self, parts: &Parts, host: Option<&HeaderValue>) -> Step<&RouteTarget> {
        let route_host = host.and_then(|h| h.to_str().ok()).map(normalize_host);
        match self.router.find(&parts.method, route_host.as_deref(), parts.uri.path()) {
            Found::Route(route) => Ok(route),
            Found::NotFound => Err(local_reply(StatusCode::NOT_FOUND, "no route", None)),
            Found::MethodNotAllowed(allow) => Err(method_not_allowed(&allow)),
        }
    }

    /// Sets the forwarding headers (after the plugins: they cannot forge them), puts an
    /// upgrade's headers back, and points the request at the address the upstream's policy picks
    /// (by the request as the plugins left it) over HTTP/1.1; `None` when every address of the
    /// upstream is ejected. The forwarding fields of a peer that is not trusted are returned for
    /// the encoder to write rather than put into the map, unless hyper's client sends the request
    /// (an upgrade) or the policy reads a header to pick the address.
    fn address_upstream<'a>(
        &self,
        parts: &mut Parts,
        client: &'a ClientIp,
        host: Option<&'a HeaderValue>,
        upgrade: bool,
        route: &RouteTarget,
    ) -> Option<(Pick, Option<Forwarding<'a>>)> {
        let trusted = self.trusted.contains(client.ip());
        let proto = scheme(parts);
        let upstream = &route.upstream;
        let forwarding = if trusted || upgrade || upstream.balance_reads_headers() {
            add_forwarding_headers(&mut parts.headers, client, trusted, proto, host);
            None
        } else {
            Some(untrusted_forwarding(&mut parts.headers, client, proto, host))
        };
        if upgrade {
            crate::ws::restore_upgrade_headers(&mut parts.headers);
        }
        let pick = upstream.pick(upstream.balance_key(&parts.headers, client.ip()))?;
        parts.uri = upstream_uri(&parts.uri, upstream.address(&pick));
        // Upstreams always get HTTP/1.1, whatever the client spoke.
        parts.version = Version::HTTP_11;
        Some((pick, forwarding))
    }
}

/// The scheme the client used: `https` on a `listen_tls:` listener (the connection put its
/// [`TlsInfo`] on the request), else `http`.
pub(crate) fn scheme(parts: &Parts) -> &'static str {
    if parts.extensions.get::<TlsInfo>().is_some() {
        "https"
    } else {
        "http"
    }
}

/// The TLS server name (SNI) the connection put on the request: shared with the connection (no
/// per-request copy); None on plain HTTP and for a TLS client that sent none.
pub(crate) fn server_name(parts: &Parts) -> Option<Arc<str>> {
    parts.extensions.get::<TlsInfo>()?.server_name.clone()
}

/// The route's plugin exchange (an arena slot), if it has plugins; 503 when no slot is free.
fn start_chain(route: &RouteTarget, client: &ClientAddr, parts: &Parts) -> Step<Option<Keep>> {
    let Some(chain) = &route.chain else {
        return Ok(None);
    };
    match chain.start_boxed_from(client, scheme(parts)) {
        Ok(x) => Ok(x.map(|mut x| {
            x.set_server_name(server_name(parts));
            Keep::Owned(x)
        })),
        Err(weft_runtime::Busy) => {
            let mut resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, "busy", None);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(resp)
        }
    }
}

/// The upstream's response head: a WebSocket upgrade it accepted becomes a tunnel of both
/// upgraded connections; hop-by-hop headers are stripped (an upgrade's put back); HTTP/1.1.
fn upstream_head(
    mut resp: Response<ResponseBody>,
    upgrade: Option<ClientUpgrade>,
    route: &RouteTarget,
) -> Response<ResponseBody> {
    let tunnelled = match upgrade {
        Some(up) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            crate::ws::tunnel(up, hyper::upgrade::on(&mut resp), route.name.clone());
            true
        }
        _ => false,
    };
    strip_hop_by_hop(resp.headers_mut());
    if tunnelled {
        crate::ws::restore_upgrade_headers(resp.headers_mut());
    }
    *resp.version_mut() = Version::HTTP_11;
    resp
}

impl Flight<'_> {
    /// A reply that ends the request, carrying the exchange (its log phase runs when sent).
    fn reply(&mut self, status: StatusCode, message: &str) -> Reply {
        local_reply(status, message, self.exchange.take())
    }

    /// The request-headers phases; a path a plugin set is normalised like a client's before it
    /// goes upstream (the runtime checked its bytes; `//admin` or `/x/../admin` are still valid
    /// bytes). Returns how the request body goes through the chain, asked under the same lock.
    async fn request_phases(&mut self, parts: &mut Parts, path_opts: &crate::path::PathOptions) -> Step<BodyMode> {
        let Some(x) = self.exchange.as_mut() else {
            return Ok(BodyMode::None);
        };
        let mut x = x.lock().await;
        let t = x.handles(WeftPhase::RequestHeaders).then(quanta::Instant::now);
        // A plugin that changes the path or query gives the request a new URI, built from a new
        // allocation while the old URI is alive (`Batch::apply_to_request`), so its bytes are
        // elsewhere; an unchanged one is normal already and is not walked again.
        let before = path_identity(&parts.uri);
        let flow = x.request_headers_async(parts).await;
        let mode = x.body_mode(BodySide::Request);
        drop(x);
        if let Some(t) = t {
            self.route
                .metrics
                .request_phase(quanta::Instant::now().saturating_duration_since(t));
        }
        if let Flow::Respond(resp) = flow {
            return Err(plugin_reply(resp, self.exchange.take()));
        }
        if path_identity(&parts.uri) == before {
            return Ok(mode);
        }
        if let Err(e) = normalize_uri(&mut parts.uri, path_opts) {
            warn!(
                route = %self.route.name, request_id = ?self.request_id,
                "a plugin set a request path that cannot be normalised: {e}; answering 500"
            );
            return Err(self.reply(StatusCode::INTERNAL_SERVER_ERROR, "plugin failure"));
        }
        Ok(mode)
    }

    /// Drops the exchange when no phase after the request headers will read it (a chain of
    /// request-headers plugins, such as auth): its arena slot goes back before the upstream is
    /// asked rather than after its answer, so a thread's requests keep reusing one cache-warm
    /// slot and a slow upstream holds no slots; the response takes the plugin-free path.
    fn release_if_done(&mut self) {
        if self
            .exchange
            .as_ref()
            .is_some_and(|x| !x.needed_after_request_headers())
        {
            self.exchange = None;
        }
    }

    /// The request body streamed through the body plugins (the exchange becomes shared with it).
    fn stream_request_body(&mut self, parts: &mut Parts, body: RequestBody) -> UpstreamBody {
        // The plugins may change the length: stream it (chunked upstream).
        parts.headers.remove(header::CONTENT_LENGTH);
        let shared = self.exchange.take().expect("a plugin route's exchange").into_shared();
        self.exchange = Some(Keep::Shared(Arc::clone(&shared)));
        UpstreamBody::Plugin(Box::new(PluginBody::new(body, shared, BodySide::Request)))
    }

    async fn request_body_buffered(&mut self, parts: &mut Parts, body: RequestBody) -> Step<UpstreamBody> {
        let (route, request_id) = (self.route, self.request_id);
        let x = self.exchange.as_mut().expect("called with an exchange");
        let budget = x.lock().await.buffered_budget();
        let bytes = match collect_limited(body, route.body_limit, &budget).await {
            Ok(b) => b,
            Err(e @ CollectError::OverBudget { .. }) => {
                warn!(route = %route.name, ?request_id, "request body not buffered: {e}; answering 503");
                return Err(over_budget(StatusCode::SERVICE_UNAVAILABLE, self.exchange.take()));
            }
            Err(CollectError::TooLarge { limit }) => {
                warn!(
                    route = %route.name, ?request_id, limit,
                    "request body exceeds max_buffered_body_bytes of a buffered body plugin; answering 413"
                );
                return Err(self.reply(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
            }
            Err(CollectError::Failed(e)) if crate::conn::timeout_in(&*e).is_some() => {
                return Err(self.reply(StatusCode::REQUEST_TIMEOUT, "request body timed out"));
            }
            Err(CollectError::Failed(e)) => {
                debug!(route = %route.name, ?request_id, error = %e, "request body failed while buffering");
                return Err(self.reply(StatusCode::BAD_REQUEST, "request body incomplete"));
            }
        };
        let outcome = x.lock().await.request_body_buffered(parts, bytes).await;
        self.buffered_outcome(outcome, &mut parts.headers)
            .map(UpstreamBody::Full)
    }

    /// A streamed body plugin and no body: the end-of-stream call now, so an appended body
    /// gets an exact length and an empty one stays without framing.
    async fn request_body_empty(&mut self, parts: &mut Parts, body: RequestBody) -> Step<UpstreamBody> {
        let x = self.exchange.as_mut().expect("called with an exchange");
        let mut out = Vec::new();
        let done = x
            .lock()
            .await
            .body_chunk(BodySide::Request, Bytes::new(), true, &mut out)
            .await;
        if done.is_err() {
            return Err(self.reply(StatusCode::INTERNAL_SERVER_ERROR, "plugin failure"));
        }
        if out.is_empty() {
            return Ok(UpstreamBody::Plain(body));
        }
        Ok(UpstreamBody::Full(with_length(out, &mut parts.headers)))
    }

    /// Sends the request to the picked address of the route's upstream (another one on a
    /// retry: `pick` then says which) and waits for the response head: 504 on the upstream's
    /// timeout, 408 when the client's body stalled, 502 when it failed.
    async fn forward(
        &mut self,
        req: Box<Request<UpstreamBody>>,
        pick: &mut Pick,
        timer: &crate::timer::Reused,
        out: Outbound<'_>,
    ) -> Step<Response<ResponseBody>> {
        let (route, request_id) = (self.route, self.request_id);
        let upstream = &route.upstream;
        let result = upstream.send(req, pick, timer, out).await;
        let addr = upstream.address(pick);
        match result {
            Ok(resp) => Ok(resp),
            Err(UpstreamError::Timeout) => {
                route.metrics.upstream_timeout();
                warn!(route = %route.name, upstream = %upstream.name, %addr, ?request_id, "upstream timed out");
                Err(self.reply(StatusCode::GATEWAY_TIMEOUT, "upstream timed out"))
            }
            Err(UpstreamError::RequestBodyTimeout) => {
                debug!(route = %route.name, ?request_id, "request body timed out while streaming upstream");
                Err(self.reply(StatusCode::REQUEST_TIMEOUT, "request body timed out"))
            }
            Err(e) => {
                route.metrics.upstream_failure();
                warn!(
                    route = %route.name, upstream = %upstream.name, %addr, ?request_id,
                    error = %error_chain(&e), "upstream request failed"
                );
                Err(self.reply(StatusCode::BAD_GATEWAY, "upstream unavailable"))
            }
        }
    }

    /// The response-headers phases (reverse chain order); a local reply replaces the upstream's
    /// response (dropping its body closes or returns the upstream connection). `body` goes on
    /// sending a request body still streaming while the phase waits for the exchange. Returns
    /// how the response body goes through the chain, asked under the same lock.
    async fn response_phases(
        &mut self,
        parts: &mut http::response::Parts,
        lines: Option<&mut Lines>,
        body: &mut ResponseBody,
    ) -> Step<BodyMode> {
        let Some(x) = self.exchange.as_mut() else {
            return Ok(BodyMode::None);
        };
        let mut x = x.lock_driving(body).await;
        // Timed when a plugin has the phase (two clock reads and a histogram otherwise spent on
        // a chain without it).
        let t = x.handles(WeftPhase::ResponseHeaders).then(quanta::Instant::now);
        let flow = match lines {
            Some(lines) => {
                let mut head = LinesHead {
                    status: &mut parts.status,
                    lines,
                };
                x.response_headers_async(&mut head).await
            }
            None => x.response_headers_async(parts).await,
        };
        let mode = x.body_mode(BodySide::Response);
        drop(x);
        if let Some(t) = t {
            self.route
                .metrics
                .response_phase(quanta::Instant::now().saturating_duration_since(t));
        }
        match flow {
            Flow::Respond(resp) => Err(plugin_reply(resp, self.exchange.take())),
            Flow::Continue => Ok(mode),
        }
    }

    /// The response to the client, its body untouched (its fields `lines` when they stayed so)
    /// or (`streamed`) streamed through the body plugins; no future of its own: the request's
    /// future moves nothing more for it.
    fn response_body(
        mut self,
        mut parts: http::response::Parts,
        body: ResponseBody,
        addr: &Authority,
        streamed: bool,
        lines: Option<Box<Lines>>,
    ) -> Reply {
        debug!(route = %self.route.name, %addr, status = parts.status.as_u16(), streamed, "proxied");
        if !streamed {
            return Response::from_parts(parts, ProxyBody::new(body, self.exchange).with_lines(lines));
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        let shared = self.exchange.take().expect("a plugin route's exchange").into_shared();
        let body = PluginBody::new(body, Arc::clone(&shared), BodySide::Response);
        Response::from_parts(parts, ProxyBody::new(body, Some(Keep::Shared(shared))))
    }

    /// The response with its body collected for the buffered body plugins.
    async fn buffered_response(
        mut self,
        mut parts: http::response::Parts,
        body: ResponseBody,
        addr: &Authority,
    ) -> Reply {
        debug!(route = %self.route.name, %addr, status = parts.status.as_u16(), "proxied, buffering the body");
        match self.response_body_buffered(&mut parts, body).await {
            Ok(pieces) => Response::from_parts(parts, ProxyBody::new(pieces, self.exchange)),
            Err(reply) => reply,
        }
    }

    async fn response_body_buffered(
        &mut self,
        parts: &mut http::response::Parts,
        mut body: ResponseBody,
    ) -> Step<Pieces> {
        let (route, request_id) = (self.route, self.request_id);
        let upstream = &route.upstream.name;
        let x = self.exchange.as_mut().expect("called with an exchange");
        let budget = x.lock_driving(&mut body).await.buffered_budget();
        let bytes = match collect_limited(body, route.body_limit, &budget).await {
            Ok(b) => b,
            Err(e @ CollectError::OverBudget { .. }) => {
                warn!(route = %route.name, %upstream, ?request_id, "response body not buffered: {e}; answering 502");
                return Err(over_budget(StatusCode::BAD_GATEWAY, self.exchange.take()));
            }
            Err(CollectError::TooLarge { limit }) => {
                warn!(
                    route = %route.name, %upstream, ?request_id, limit,
                    "response body exceeds max_buffered_body_bytes of a buffered body plugin; answering 502"
                );
                return Err(self.reply(StatusCode::BAD_GATEWAY, "upstream response too large"));
            }
            Err(CollectError::Failed(e)) => {
                warn!(route = %route.name, %upstream, ?request_id, error = %e, "upstream body failed");
                let status = match crate::conn::timeout_in(&*e) {
                    Some(_) => StatusCode::GATEWAY_TIMEOUT,
                    None => StatusCode::BAD_GATEWAY,
                };
                return Err(self.reply(status, "upstream response incomplete"));
            }
        };
        let outcome = x.lock().await.response_body_buffered(parts, bytes).await;
        self.buffered_outcome(outcome, &mut parts.headers)
    }

    /// What buffered body plugins made of a body: a local reply that ends the request, or the
    /// new body, sent with its exact length.
    fn buffered_outcome(&mut self, outcome: BufferedBody, headers: &mut header::HeaderMap) -> Step<Pieces> {
        match outcome {
            BufferedBody::Respond(resp) => Err(plugin_reply(resp, self.exchange.take())),
            BufferedBody::Body(pieces) => Ok(with_length(pieces, headers)),
        }
    }
}

/// `pieces` as one body, its `content-length` set in `headers`.
fn with_length(pieces: Vec<Bytes>, headers: &mut header::HeaderMap) -> Pieces {
    let pieces = Pieces::new(pieces);
    headers.insert(header::CONTENT_LENGTH, pieces.len().into());
    pieces
}

/// A buffered body refused for want of memory (`runtime.max_buffered_bytes_total`).
fn over_budget(status: StatusCode, exchange: Option<Keep>) -> Reply {
    let mut resp = local_reply(status, "buffered body memory exhausted", exchange);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Whether a response with `status` has no body, whatever its headers say (1xx, 204, 304).
fn bodiless(status: StatusCode) -> bool {
    status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// The upstream's response as it came, for a request without plugins (its fields as lines when
/// they stayed so).
fn untouched(
    route: &RouteTarget,
    addr: &Authority,
    parts: http::response::Parts,
    body: ResponseBody,
    lines: Option<Box<Lines>>,
) -> Reply {
    debug!(route = %route.name, %addr, status = parts.status.as_u16(), "proxied");
    Response::from_parts(parts, ProxyBody::new(body, None).with_lines(lines))
}

/// Where the bytes of `uri`'s path and query are: the same address and length means the same,
/// unmodified, URI (`http::Uri` is immutable; a change builds a new one from new bytes).
fn path_identity(uri: &http::Uri) -> Option<(usize, usize)> {
    uri.path_and_query()
        .map(|pq| (pq.as_str().as_ptr() as usize, pq.as_str().len()))
}

/// Replaces the path of `uri` with its normal form (`path.rs`), keeping the query; allocates
/// only when the path changes.
fn normalize_uri(uri: &mut http::Uri, opts: &crate::path::PathOptions) -> Result<(), crate::path::PathError> {
    let std::borrow::Cow::Owned(mut pq) = crate::path::normalize(uri.path(), opts)? else {
        return Ok(());
    };
    if let Some(q) = uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = std::mem::take(uri).into_parts();
    // Only bytes of the old path and query, so it parses.
    parts.path_and_query = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok();
    *uri = http::Uri::from_parts(parts).map_err(|_| crate::path::PathError::BadChar)?;
    Ok(())
}

/// 405 with `Allow` (RFC 9110 §15.5.6).
fn method_not_allowed(allow: &[Method]) -> Reply {
    let mut resp = local_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None);
    let list = allow.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    if let Ok(v) = HeaderValue::from_str(&list) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

fn plugin_reply(resp: Response<Bytes>, exchange: Option<Keep>) -> Reply {
    let (parts, bytes) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::full(bytes, exchange))
}

#[cfg(test)]
mod future_size {
    use super::*;

    /// The size of the future an async fn taking three arguments returns.
    fn of<A, B, C, F: FnOnce(A, B, C) -> Fut, Fut>(_: F) -> usize {
        size_of::<Fut>()
    }

    /// A request's future is moved whole per request (into its box, and into each awaiting
    /// future when built), so its size is a cost of every request: a rare path inlined into it
    /// (a WebSocket plugin's, a body stage's call) shows here. 1,512 bytes since the request's
    /// head and body are held once, in `handle`'s block, and `stages` borrows them (2,448 with
    /// both as `async fn`s taking the request; 3,496 before the rare paths were boxed, a wrapper
    /// level removed and the request kept boxed while it is sent).
    #[test]
    fn a_requests_future_stays_small() {
        let n = of(Proxy::handle);
        // A margin for other compiler versions; the request held twice again, or a path of a few
        // hundred bytes inlined, shows.
        assert!(n <= 2 * 1024, "Proxy::handle's future is {n} bytes");
    }
}
