//! Lean HTTP/1.1 for both sides of the proxy, driven on the request's own task.
//!
//! The upstream client: the caller (`crate::pool`) owns the stream and drives these stages; the
//! codec stages only look at bytes.
//!
//! - [`head`]: parses a response head into `http::response::Parts` and decides its body's
//!   framing and whether the connection may carry another request. Stricter than hyper's client,
//!   which took transfer-encoding with content-length (ignoring the length) and read a
//!   transfer-encoding not ending in chunked to close: both are errors here (RFC 9112 §6.3 lets
//!   a client refuse them), never a guess;
//! - [`encode`]: writes a request head with the body framing hyper's client would choose;
//! - [`chunked`]: decodes a chunked body from bytes as they arrive, split anywhere;
//! - [`send`]: writes a message (head, then its body as it comes) to the connection;
//! - [`recv`]: reads the connection into its buffer and cuts the response body out of it.
//!
//! The server side ([`server`]): a client connection's body-less HTTP/1.1 requests are parsed
//! ([`request`]), served and answered ([`respond`], with hyper's server's framing) on the
//! connection's task; any other request hands the connection, with the bytes read, to hyper's
//! server for the rest of its life.
//!
//! Hand-written rather than a crate: `ureq-proto` (sans-I/O, by ureq's author) has a typestate
//! flow in which the response is read only after the whole request body was sent, while a
//! proxy streams a client's upload and must take an upstream's early answer; hyper's client is
//! what this replaces (a dispatcher with channels per request). On the server side hyper stays
//! for everything but the plain request; its dispatcher (a poll loop over read, write and flush
//! states per request) is what the lean path leaves out.

pub mod chunked;
pub mod encode;
pub mod head;
pub mod lean_body;
pub mod lines;
pub mod recv;
pub mod request;
pub mod respond;
pub mod send;
pub mod server;

use std::io;

use crate::body::BoxError;

/// Why an exchange on an open connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("upstream closed the connection before a response head")]
    Closed,
    #[error(transparent)]
    Response(#[from] Error),
    /// The request body failed on our side (the client went away, its body stalled, a body
    /// plugin failed).
    #[error("request body failed: {0}")]
    Body(#[source] BoxError),
    #[error("request body length does not match its content-length")]
    BodyLength,
    /// A WebSocket upgrade, which still goes through hyper's client.
    #[error("{0}")]
    Upgrade(#[source] hyper::Error),
}

impl ClientError {
    /// The request failed on our side, not the upstream's.
    pub fn is_user(&self) -> bool {
        match self {
            ClientError::Body(_) | ClientError::BodyLength => true,
            ClientError::Upgrade(e) => e.is_user(),
            _ => false,
        }
    }
}

/// A response the client refuses: it becomes the proxy's 502, like hyper's parse errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head longer than {0} bytes")]
    HeadTooLarge(usize),
    #[error("response header is not valid: {0}")]
    Header(&'static str),
    #[error("response has both transfer-encoding and content-length")]
    TransferEncodingAndLength,
    #[error("response content-length is not valid")]
    BadContentLength,
    #[error("response transfer-encoding does not end in chunked")]
    NotChunked,
    #[error("HTTP/1.0 response with transfer-encoding")]
    Http10TransferEncoding,
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
}
