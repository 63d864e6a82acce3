//! A lean HTTP/1.1 client codec for upstream exchanges, sans I/O: the caller reads and writes
//! the pooled stream on the request's own task, and these stages only look at bytes.
//!
//! - [`head`]: parses a response head into `http::response::Parts` and decides its body's
//!   framing and whether the connection may carry another request, as strictly as hyper's
//!   client does (conflicting or unknown framing is an error, never a guess);
//! - [`encode`]: writes a request head with the body framing hyper's client would choose;
//! - [`chunked`]: decodes a chunked body from bytes as they arrive, split anywhere.
//!
//! Status: not yet used by the pool (see the branch's report); the pool still drives hyper's
//! `client::conn::http1`.

pub mod chunked;
pub mod encode;
pub mod head;

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
