//! A deliberately small HTTP/1.1 server for `ljleak serve`: GET and HEAD
//! only, one request per connection (`Connection: close`), request heads
//! bounded to [`MAX_HEAD`] bytes, read and write timeouts, and a fixed pool
//! of handler threads behind a bounded queue (a full queue answers 503
//! at once). It is what a Prometheus or pprof scraper needs and nothing
//! more: no bodies, no TLS, no keep-alive, so there is no per-connection
//! state to leak in a process that runs for months.
//!
//! Not a general web server: put a reverse proxy in front for TLS or auth.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8192;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Accepted connections waiting for a handler thread.
const QUEUE: usize = 32;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub method: String,
    /// Path without the query string, percent-decoded.
    pub path: String,
    /// Query parameters in order, percent-decoded.
    pub query: Vec<(String, String)>,
}

impl Request {
    /// First value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content-Type header.
    pub content_type: &'static str,
    /// Extra headers (name, value).
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Why a request head could not be parsed: the status to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not an HTTP request line.
    #[error("malformed request")]
    Malformed,
    /// Over [`MAX_HEAD`].
    #[error("request head too large")]
    TooLarge,
    /// The client stopped sending before the end of the head.
    #[error("incomplete request")]
    Incomplete,
}

impl HeadError {
    fn status(self) -> u16 {
        match self {
            HeadError::Malformed => 400,
            HeadError::TooLarge => 431,
            HeadError::Incomplete => 408,
        }
    }
}

/// Parse a complete request head (through the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let line = text.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Request {
        method: method.to_string(),
        path: percent_decode(path),
        query,
    })
}

/// `%XX` and `+` decoding; invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Read a request head from `r`, at most [`MAX_HEAD`] bytes.
fn read_head(r: &mut impl Read) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = r.read(&mut chunk).map_err(|_| HeadError::Incomplete)?;
        if n == 0 {
            return Err(HeadError::Incomplete);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(from + end + 4);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

fn write_response(s: &mut TcpStream, r: &Response, head_only: bool) -> std::io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    s.write_all(h.as_bytes())?;
    if !head_only {
        s.write_all(&r.body)?;
    }
    s.flush()
}

/// Answer one connection.
fn serve_one(mut s: TcpStream, handler: &(dyn Fn(&Request) -> Response + Sync)) {
    let _ = s.set_read_timeout(Some(READ_TIMEOUT));
    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
    let resp = match read_head(&mut s).and_then(|h| parse_head(&h)) {
        Ok(req) if req.method == "GET" || req.method == "HEAD" => {
            let r = handler(&req);
            let _ = write_response(&mut s, &r, req.method == "HEAD");
            return;
        }
        Ok(_) => {
            let mut r = Response::text(405, "only GET and HEAD\n");
            r.headers.push(("Allow", "GET, HEAD".into()));
            r
        }
        Err(e) => Response::text(e.status(), format!("{e}\n")),
    };
    let _ = write_response(&mut s, &resp, false);
}

/// The handler every request goes to.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Accept connections on `listener` forever, handing each to one of
/// `threads` handler threads. Returns only if accepting fails for good.
pub fn run(listener: TcpListener, threads: usize, handler: Handler) -> std::io::Result<()> {
    let (tx, rx): (SyncSender<TcpStream>, Receiver<TcpStream>) = sync_channel(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads.max(1) {
        let rx = Arc::clone(&rx);
        let handler = Arc::clone(&handler);
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || loop {
                let next = rx.lock().map(|r| r.recv());
                match next {
                    Ok(Ok(s)) => serve_one(s, &*handler),
                    _ => return,
                }
            })?;
    }
    for conn in listener.incoming() {
        match conn {
            Ok(s) => match tx.try_send(s) {
                Ok(()) => {}
                Err(TrySendError::Full(mut s)) => {
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = write_response(&mut s, &Response::text(503, "busy\n"), false);
                }
                Err(TrySendError::Disconnected(_)) => break,
            },
            // Out of fds or a connection reset before accept: keep serving.
            Err(e) => {
                log::debug!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_line_and_query() {
        let r = parse_head(
            b"GET /debug/pprof/heap?pid=12&seconds=30&x=a%20b+c HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/debug/pprof/heap");
        assert_eq!(r.param("pid"), Some("12"));
        assert_eq!(r.param("seconds"), Some("30"));
        assert_eq!(r.param("x"), Some("a b c"));
        assert_eq!(r.param("nope"), None);
        assert_eq!(parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().path, "/");
        assert_eq!(parse_head(b"GARBAGE\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(
            parse_head(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn head_is_bounded() {
        let big = vec![b'a'; MAX_HEAD * 4];
        assert_eq!(read_head(&mut &big[..]), Err(HeadError::TooLarge));
        assert_eq!(
            read_head(&mut &b"GET / HTTP/1.1\r\n"[..]),
            Err(HeadError::Incomplete)
        );
        let mut two = &b"GET / HTTP/1.1\r\n\r\nextra"[..];
        assert_eq!(read_head(&mut two).unwrap(), b"GET / HTTP/1.1\r\n\r\n");
    }
}
