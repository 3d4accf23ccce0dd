//! The little HTTP/1.1 the annotation page needs, on `std::net`: one request per connection
//! (`Connection: close`), a bounded head and body, read and write timeouts, `Content-Length`
//! bodies only. Written by hand rather than with a server crate so that every limit is explicit
//! (the small crates have no socket timeouts, so one idle connection could hold a worker) and no
//! async runtime is compiled for a page that serves a handful of annotators.
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bounds on what one connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line and headers, bytes.
    pub max_head: usize,
    /// Body, bytes (a rating is well under 1 KiB).
    pub max_body: usize,
    /// Each read and each write of the socket.
    pub timeout: Duration,
    /// Connections served at once; more are refused with 503.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head: 16 * 1024, max_body: 64 * 1024, timeout: Duration::from_secs(10), max_connections: 64 }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A query parameter's raw value (`?token=...`); percent-escapes are not decoded, as the values
    /// this server takes (tokens) are plain.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .find_map(|c| c.trim().split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
    }
}

/// A response; `Connection: close` and the security headers are added when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, content_type, headers: Vec::new(), body: body.into() }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Why a request could not be read: a status to answer with, or a dead connection.
#[derive(Debug)]
pub enum ReadError {
    Status(u16, &'static str),
    Io(io::Error),
}

/// Reads one request within `limits`.
pub fn read_request(r: &mut impl Read, limits: &Limits) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > limits.max_head {
            return Err(ReadError::Status(431, "request head too large"));
        }
        let n = match r.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(0) => return Err(ReadError::Status(400, "connection closed inside the request head")),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ReadError::Status(408, "request head not received in time"))
            }
            Err(e) => return Err(ReadError::Io(e)),
        };
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > limits.max_head {
        return Err(ReadError::Status(431, "request head too large"));
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ReadError::Status(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() => (m, t, v),
        _ => return Err(ReadError::Status(400, "malformed request line")),
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Status(400, "only HTTP/1.x is served"));
    }
    if !target.starts_with('/') {
        return Err(ReadError::Status(400, "the request target must be a path"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line.split_once(':').ok_or(ReadError::Status(400, "malformed header line"))?;
        if k.is_empty() || k.contains([' ', '\t']) {
            return Err(ReadError::Status(400, "malformed header name"));
        }
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request { method: method.to_string(), path: path.to_string(), query: query.to_string(), headers, body: Vec::new() };
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Status(501, "chunked bodies are not accepted: send Content-Length"));
    }
    let lengths: Vec<&str> = req.headers.iter().filter(|(k, _)| k == "content-length").map(|(_, v)| v.as_str()).collect();
    let len = match lengths.as_slice() {
        [] => 0,
        [v] => v.parse::<usize>().map_err(|_| ReadError::Status(400, "bad Content-Length"))?,
        _ => return Err(ReadError::Status(400, "several Content-Length headers")),
    };
    if len > limits.max_body {
        return Err(ReadError::Status(413, "request body too large"));
    }
    let mut body = buf[head_end + 4..].to_vec();
    body.truncate(len);
    if body.len() < len {
        let start = body.len();
        body.resize(len, 0);
        r.read_exact(&mut body[start..]).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadError::Status(408, "request body not received in time"),
            io::ErrorKind::UnexpectedEof => ReadError::Status(400, "connection closed inside the body"),
            _ => ReadError::Io(e),
        })?;
    }
    req.body = body;
    Ok(req)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The page's Content-Security-Policy: its own script and style files only, no inline script,
/// no plugins, no framing, requests to this server only. Reply text shown with `textContent`
/// cannot run, and even an HTML injection could not load or run a script.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                       base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Writes `resp` with `Connection: close`, no caching, and the security headers.
pub fn write_response(w: &mut impl Write, resp: &Response) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n\
         Cross-Origin-Resource-Policy: same-origin\r\nContent-Security-Policy: {CSP}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        // Header values are ours (cookie, location), never request text; still, no line breaks.
        head.push_str(&format!("{k}: {}\r\n", v.replace(['\r', '\n'], "")));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(&resp.body)?;
    w.flush()
}

/// Serves `listener` forever: a thread per connection, at most `limits.max_connections` at once,
/// each reading one request and writing `handle`'s response. `handle` must not block for long
/// (it runs under the connection's timeouts only for I/O).
pub fn serve(listener: TcpListener, limits: Limits, handle: Arc<dyn Fn(&Request) -> Response + Send + Sync>) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment, keep serving.
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            let mut s = stream;
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_response(&mut s, &Response::text(503, "too many connections"));
            continue;
        }
        let (count, handle) = (active.clone(), handle.clone());
        let spawned = std::thread::Builder::new().name("annotate-conn".into()).spawn(move || {
            connection(stream, &limits, handle.as_ref());
            count.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            // The closure (and the connection) is dropped unrun: give its slot back.
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

/// One connection: read, answer, close. A handler that panics answers 500 (and the panic is a bug
/// to report), never takes the server down.
fn connection(mut stream: TcpStream, limits: &Limits, handle: &(dyn Fn(&Request) -> Response + Send + Sync)) {
    let _ = stream.set_read_timeout(Some(limits.timeout));
    let _ = stream.set_write_timeout(Some(limits.timeout));
    let (resp, unread) = match read_request(&mut stream, limits) {
        Ok(req) => (
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(&req)))
                .unwrap_or_else(|_| Response::text(500, "internal error (a bug: please report it)")),
            false,
        ),
        Err(ReadError::Status(code, msg)) => (Response::text(code, msg), true),
        Err(ReadError::Io(_)) => return,
    };
    let _ = write_response(&mut stream, &resp);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    if unread {
        // Closing a socket with unread input sends a reset, which can destroy the error response
        // before the client reads it: drain a bounded amount, briefly, first.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let (mut sink, mut total) = ([0u8; 4096], 0usize);
        while total < limits.max_body + limits.max_head {
            match stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &[u8]) -> Result<Request, ReadError> {
        read_request(&mut &raw[..], &Limits { max_head: 256, max_body: 32, ..Limits::default() })
    }

    fn status(raw: &[u8]) -> u16 {
        match read(raw) {
            Err(ReadError::Status(s, _)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_a_post_with_its_body() {
        let r =
            read(b"POST /api/rate?x=1&token=abc HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nCookie: a=1; t=2\r\n\r\nhello+extra").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), r.body.as_slice()), ("POST", "/api/rate", &b"hello"[..]));
        assert_eq!((r.query_param("token"), r.query_param("y")), (Some("abc"), None));
        assert_eq!((r.header("host"), r.cookie("t"), r.cookie("b")), (Some("h"), Some("2"), None));
    }

    #[test]
    fn refuses_what_it_does_not_bound_or_understand() {
        assert_eq!(status(&[b'a'; 400]), 431);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: 33\r\n\r\n"), 413);
        assert_eq!(status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 501);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2\r\n\r\n"), 400);
        assert_eq!(status(b"GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\xff: x\r\n\r\n"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x"), 400);
        assert!(matches!(read(b""), Err(ReadError::Io(_))));
    }

    #[test]
    fn response_has_the_security_headers_and_no_injected_lines() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::text(200, "hi").with_header("Location", "/a\r\nSet-Cookie: x=1")).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"));
        assert!(s.contains("X-Content-Type-Options: nosniff") && s.contains("Connection: close"));
        assert!(s.contains("Location: /aSet-Cookie: x=1\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\nhi"));
    }
}
