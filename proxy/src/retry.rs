//! Which failed upstream requests go to another address (`upstreams[].retries`, default 1).
//!
//! A retry goes to an address of the same upstream that this request has not tried and that
//! is available, picked by the upstream's policy (a `consistent_hash` key's next choice); with
//! none left the failure is answered (502). Retries are counted in
//! `weft_upstream_retries_total{upstream}`; every attempt counts toward its own address's health
//! and active requests. All attempts share the upstream's `timeout_ms`.
//!
//! What may be sent again:
//! - **Nothing of the request was written** (no connection: refused, unreachable, connect or
//!   TLS timeout; or a kept-alive connection found closed before any of the request was written): the
//!   request goes elsewhere when its method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE,
//!   TRACE) or it has no body.
//! - **The request was written but no response head came** (the connection was reset or closed,
//!   as when the upstream dies mid-request): only an idempotent request without a body, which
//!   RFC 9110 §9.2.2 allows a client to repeat. A request that was sent is consumed, so for these
//!   requests the head is copied before the first attempt (method, URI, headers; one header
//!   map clone) when the upstream has more than one address and `retries` is not 0.
//!
//! A response, whatever its status, is never retried, nor is a timeout.

use http::{HeaderMap, Method, Request, Uri, Version};
use hyper::body::Body as _;

use crate::body::{Pieces, UpstreamBody};
use crate::upstream::UpstreamError;

/// The retry state of one request.
pub struct Retry {
    /// Retries left.
    left: u32,
    idempotent: bool,
    /// The request has no body.
    empty: bool,
    /// The head of an idempotent request without a body, to send again after it was written.
    /// Boxed: the retry state is part of every request's future, which is moved whole.
    head: Option<Box<Head>>,
    /// Address indices tried so far (allocated on the first retry only).
    tried: Vec<usize>,
}

impl Retry {
    /// For `req` to an upstream with `addresses` addresses and `retries:`.
    pub fn new(req: &Request<UpstreamBody>, retries: u32, addresses: usize) -> Retry {
        let left = if addresses > 1 { retries } else { 0 };
        let idempotent = is_idempotent(req.method());
        let empty = req.body().is_end_stream();
        Retry {
            left,
            idempotent,
            empty,
            head: (left > 0 && idempotent && empty).then(|| Box::new(Head::of(req))),
            tried: Vec::new(),
        }
    }

    /// The request for another attempt after a failure (`unsent`: the request when none of it
    /// was written); `None` when the rules above do not allow one or none are left.
    pub fn replay(
        &mut self,
        unsent: Option<Box<Request<UpstreamBody>>>,
        error: &UpstreamError,
    ) -> Option<Box<Request<UpstreamBody>>> {
        if self.left == 0 {
            return None;
        }
        let req = match unsent {
            Some(req) if self.idempotent || self.empty => req,
            Some(_) => return None,
            None if matches!(error, UpstreamError::Http(_)) => Box::new(self.head.as_ref()?.request()),
            None => return None,
        };
        self.left -= 1;
        Some(req)
    }

    /// Notes address `i` as tried; returns every address tried so far.
    pub fn tried(&mut self, i: usize) -> &[usize] {
        self.tried.push(i);
        &self.tried
    }
}

/// RFC 9110 §9.2.2.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What is needed to send a request without a body again.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn of(req: &Request<UpstreamBody>) -> Head {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    fn request(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::Full(Pieces::new(Vec::new())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, body: &'static [u8]) -> Request<UpstreamBody> {
        let pieces = if body.is_empty() {
            vec![]
        } else {
            vec![bytes::Bytes::from_static(body)]
        };
        let mut req = Request::new(UpstreamBody::Full(Pieces::new(pieces)));
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from_static("/x?y");
        req.headers_mut().insert("x-a", "1".parse().unwrap());
        req
    }

    fn written() -> UpstreamError {
        UpstreamError::Timeout
    }

    #[test]
    fn an_unsent_request_is_retried_when_idempotent_or_without_a_body() {
        for (method, body, retried) in [
            (Method::GET, &b""[..], true),
            (Method::PUT, &b"data"[..], true),
            (Method::POST, &b""[..], true),
            (Method::POST, &b"data"[..], false),
            (Method::PATCH, &b"data"[..], false),
        ] {
            let req = request(method.clone(), body);
            let mut r = Retry::new(&req, 1, 2);
            let err = UpstreamError::Connect(std::io::ErrorKind::ConnectionRefused.into());
            assert_eq!(
                r.replay(Some(Box::new(req)), &err).is_some(),
                retried,
                "{method} {body:?}"
            );
        }
    }

    #[test]
    fn retries_are_bounded_and_need_another_address() {
        let req = request(Method::GET, b"");
        let err = || UpstreamError::Connect(std::io::ErrorKind::ConnectionRefused.into());
        let mut r = Retry::new(&req, 2, 3);
        let req = r.replay(Some(Box::new(req)), &err()).unwrap();
        let req = r.replay(Some(req), &err()).unwrap();
        assert!(r.replay(Some(req), &err()).is_none(), "two retries at most");
        let req = request(Method::GET, b"");
        let mut r = Retry::new(&req, 0, 3);
        assert!(r.replay(Some(Box::new(req)), &err()).is_none(), "retries: 0");
        let req = request(Method::GET, b"");
        let mut r = Retry::new(&req, 3, 1);
        assert!(r.replay(Some(Box::new(req)), &err()).is_none(), "no other address");
        assert!(r.head.is_none(), "nothing copied when no retry can happen");
    }

    #[test]
    fn a_written_request_is_sent_again_only_when_idempotent_without_a_body() {
        let req = request(Method::GET, b"");
        let mut r = Retry::new(&req, 1, 2);
        let closed = closed_error();
        let again = r.replay(None, &closed).expect("GET without a body");
        assert_eq!((again.method(), again.uri()), (&Method::GET, &Uri::from_static("/x?y")));
        assert_eq!(again.headers()["x-a"], "1");
        assert!(again.body().is_end_stream());

        let req = request(Method::POST, b"");
        assert!(Retry::new(&req, 1, 2).replay(None, &closed_error()).is_none(), "POST");
        let req = request(Method::PUT, b"data");
        assert!(Retry::new(&req, 1, 2).replay(None, &closed_error()).is_none(), "a body");
        let req = request(Method::GET, b"");
        assert!(Retry::new(&req, 1, 2).replay(None, &written()).is_none(), "a timeout");
    }

    /// The upstream closed the connection after the request went out.
    fn closed_error() -> UpstreamError {
        UpstreamError::Http(crate::h1::ClientError::Closed)
    }
}
