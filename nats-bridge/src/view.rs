//! A zero-allocation reader over an encoded request view (the layout of
//! `weft_runtime::view`: a `WeftRequestView` at offset 0, header arrays and strings after it, every
//! offset relative to the view start). Every offset is bounds-checked before use, so a corrupt
//! view is an error, never a panic or an out-of-bounds read.

use std::mem::size_of;

use weft_abi::{WeftHeader, WeftRequestView, WeftStr};

/// The view bytes are not a well-formed request view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed request view")]
pub struct BadView;

/// A checked view: accessors return slices of the original bytes.
#[derive(Clone, Copy)]
pub struct ViewReader<'a> {
    bytes: &'a [u8],
    v: WeftRequestView,
}

impl<'a> ViewReader<'a> {
    /// Checks the fixed part, every string and both header arrays against `view.size`.
    pub fn new(buf: &'a [u8]) -> Result<ViewReader<'a>, BadView> {
        if buf.len() < size_of::<WeftRequestView>() {
            return Err(BadView);
        }
        // SAFETY: length checked; WeftRequestView is plain integers, any bit pattern is valid.
        let v: WeftRequestView = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let size = v.size as usize;
        if size < size_of::<WeftRequestView>() || size > buf.len() {
            return Err(BadView);
        }
        let r = ViewReader { bytes: &buf[..size], v };
        for s in [v.method, v.path, v.query, v.host, v.client_addr, v.scheme, v.version] {
            r.str(s)?;
        }
        for (off, count) in [
            (v.req_headers_off, v.req_header_count),
            (v.resp_headers_off, v.resp_header_count),
        ] {
            for i in 0..count {
                let (n, val) = r.header(off, i)?;
                let _ = (n, val);
            }
        }
        Ok(r)
    }

    fn str(&self, s: WeftStr) -> Result<&'a [u8], BadView> {
        let end = (s.off as usize).checked_add(s.len as usize).ok_or(BadView)?;
        self.bytes.get(s.off as usize..end).ok_or(BadView)
    }

    fn header(&self, off: u32, i: u32) -> Result<(&'a [u8], &'a [u8]), BadView> {
        let at = (off as usize)
            .checked_add(i as usize * size_of::<WeftHeader>())
            .filter(|&a| a + size_of::<WeftHeader>() <= self.bytes.len())
            .ok_or(BadView)?;
        // SAFETY: bounds checked; WeftHeader is plain integers.
        let h: WeftHeader = unsafe { std::ptr::read_unaligned(self.bytes.as_ptr().add(at).cast()) };
        Ok((self.str(h.name)?, self.str(h.value)?))
    }

    pub fn phase(&self) -> u32 {
        self.v.phase
    }
    pub fn request_id(&self) -> u64 {
        self.v.request_id
    }
    pub fn status(&self) -> u32 {
        self.v.status
    }
    pub fn method(&self) -> &'a [u8] {
        self.str(self.v.method).unwrap_or_default()
    }
    pub fn path(&self) -> &'a [u8] {
        self.str(self.v.path).unwrap_or_default()
    }
    pub fn query(&self) -> &'a [u8] {
        self.str(self.v.query).unwrap_or_default()
    }
    pub fn host(&self) -> &'a [u8] {
        self.str(self.v.host).unwrap_or_default()
    }
    pub fn client_addr(&self) -> &'a [u8] {
        self.str(self.v.client_addr).unwrap_or_default()
    }
    pub fn scheme(&self) -> &'a [u8] {
        self.str(self.v.scheme).unwrap_or_default()
    }
    pub fn http_version(&self) -> &'a [u8] {
        self.str(self.v.version).unwrap_or_default()
    }
    pub fn request_headers(&self) -> Headers<'a> {
        Headers {
            r: *self,
            off: self.v.req_headers_off,
            count: self.v.req_header_count,
            i: 0,
        }
    }
    pub fn response_headers(&self) -> Headers<'a> {
        Headers {
            r: *self,
            off: self.v.resp_headers_off,
            count: self.v.resp_header_count,
            i: 0,
        }
    }
}

/// Iterator over one header array of a checked view: `(name, value)` byte slices.
pub struct Headers<'a> {
    r: ViewReader<'a>,
    off: u32,
    count: u32,
    i: u32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.i >= self.count {
            return None;
        }
        let h = self.r.header(self.off, self.i).ok();
        self.i += 1;
        h
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.count - self.i) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Headers<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method, Uri, Version};
    use weft_runtime::view::{RequestHead, ViewIdentity, encode_request, encode_response};

    fn encoded() -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com"));
        headers.append("x-bin", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        let uri: Uri = "/p?q=1".parse().unwrap();
        let head = RequestHead {
            method: &Method::PUT,
            uri: &uri,
            version: Version::HTTP_11,
            headers: &headers,
        };
        let id = ViewIdentity {
            request_id: 42,
            slot: 1,
            generation: 2,
            client: "10.1.2.3:4".parse::<std::net::SocketAddr>().unwrap().into(),
            scheme: "https",
            server_name: None,
        };
        let end = encode_request(&mut buf, &id, 0, &head).unwrap();
        let mut rh = HeaderMap::new();
        rh.insert("server", HeaderValue::from_static("up"));
        let size = encode_response(&mut buf, end.size, 2, 204, &rh).unwrap().size;
        buf.truncate(size);
        buf
    }

    #[test]
    fn reads_what_the_runtime_encodes() {
        let buf = encoded();
        let r = ViewReader::new(&buf).unwrap();
        assert_eq!((r.phase(), r.request_id(), r.status()), (2, 42, 204));
        assert_eq!(r.method(), b"PUT");
        assert_eq!(r.path(), b"/p");
        assert_eq!(r.query(), b"q=1");
        assert_eq!(r.host(), b"example.com");
        assert_eq!(r.client_addr(), b"10.1.2.3:4");
        assert_eq!(r.scheme(), b"https");
        assert_eq!(r.http_version(), b"HTTP/1.1");
        let req: Vec<_> = r.request_headers().collect();
        assert_eq!(
            req,
            vec![(&b"host"[..], &b"example.com"[..]), (&b"x-bin"[..], &b"\xff\xfe"[..])]
        );
        let resp: Vec<_> = r.response_headers().collect();
        assert_eq!(resp, vec![(&b"server"[..], &b"up"[..])]);
    }

    #[test]
    fn corrupt_views_are_errors() {
        let good = encoded();
        assert!(ViewReader::new(&good[..10]).is_err());
        assert!(
            ViewReader::new(&good[..good.len() - 1]).is_err(),
            "size beyond the buffer"
        );
        // Every single-byte corruption of the fixed part either still reads or is an error.
        for at in 0..size_of::<WeftRequestView>() {
            let mut b = good.clone();
            b[at] = 0xff;
            if let Ok(r) = ViewReader::new(&b) {
                let _ = r.request_headers().count() + r.response_headers().count();
            }
        }
    }
}
