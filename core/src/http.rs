//! Just enough HTTP/1.1 for a WebSocket handshake and the admin endpoints: read one request head, write one
//! small response, close.
//!
//! Owning the handshake (rather than tungstenite's `accept_hdr_async`) lets the listener answer 400/401/403/404/
//! 503 with proper headers, serve a static page on the same port, and keep the head under a hard size cap.

use std::borrow::Cow;
use std::fmt;
use std::io;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted (request line plus headers); a longer one is a bad request, not a reason to
/// buffer without bound.
pub const MAX_HEAD_SIZE: usize = 8 * 1024;
/// Most headers accepted in one request head; browsers send about 15.
pub const MAX_HEADERS: usize = 48;
/// Bytes read from the socket per read call while looking for the end of the head.
const READ_CHUNK: usize = 1024;

/// Why a request head could not be read.
#[derive(Debug, Error)]
pub enum HttpError {
    /// Reading from the connection failed.
    #[error("reading request head: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection before the head was complete.
    #[error("connection closed before the request head was complete")]
    Closed,
    /// The head exceeded [`MAX_HEAD_SIZE`].
    #[error("request head larger than {MAX_HEAD_SIZE} bytes")]
    TooLarge,
    /// The bytes are not an HTTP/1.x request (or have more than [`MAX_HEADERS`] headers).
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
}

/// A parsed request head. Header names are kept lowercase; values are kept as raw bytes and read with
/// [`RequestHead::header`], which returns only valid UTF-8 (header values are ASCII in practice).
///
/// `Debug` shows header names but only the values of headers that cannot carry credentials.
#[derive(Clone)]
pub struct RequestHead {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path without the query string, e.g. `/pushmsg`.
    pub path: String,
    /// The query string without its `?` (empty when there is none), e.g. `id=3,4` on an admin request.
    pub query: String,
    headers: Vec<(String, Vec<u8>)>,
}

/// Headers whose values may hold credentials: `Authorization`, cookies, and the subprotocol list, where
/// browsers offer `wsmq.auth.<credentials>`.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "sec-websocket-protocol",
];

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, Cow<'_, str>)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let value = if SECRET_HEADERS.contains(&name.as_str()) {
                    Cow::Borrowed("<redacted>")
                } else {
                    String::from_utf8_lossy(value)
                };
                (name.as_str(), value)
            })
            .collect();
        f.debug_struct("RequestHead")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &headers)
            .finish()
    }
}

impl RequestHead {
    /// The first value of header `name` (case-insensitive), if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).next()
    }

    /// Every value of header `name` (case-insensitive), in order; a header may legally repeat, as
    /// `Sec-WebSocket-Protocol` often does.
    pub fn headers<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Whether comma-separated header `name` contains `token` (case-insensitive), e.g. `Connection: keep-alive,
    /// Upgrade` contains `upgrade`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Reads one request head from `reader`, returning it with the bytes read past its end (the first bytes of a
/// WebSocket stream, which must not be lost).
///
/// Fails on I/O errors, EOF before the end of the head, a head over [`MAX_HEAD_SIZE`] or a malformed head.
/// Callers bound the time it may take.
pub async fn read_request_head<R>(reader: &mut R) -> Result<(RequestHead, Vec<u8>), HttpError>
where
    R: AsyncRead + Unpin,
{
    let (head, mut buf, consumed) = read_request_head_raw(reader).await?;
    let leftover = buf.split_off(consumed);
    Ok((head, leftover))
}

/// Reads one request head like [`read_request_head`] but keeps every byte read: returns the head, all the bytes
/// read (the head's own bytes, then whatever followed) and the head's length. For routes served by a full HTTP
/// implementation (`crate::http_api`), which must parse the request again from its first byte.
pub async fn read_request_head_raw<R>(
    reader: &mut R,
) -> Result<(RequestHead, Vec<u8>, usize), HttpError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let start = buf.len();
        buf.resize(start + READ_CHUNK, 0);
        let n = reader.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(HttpError::Closed);
        }
        if let Some((head, consumed)) = parse_head(&buf)? {
            return Ok((head, buf, consumed));
        }
        if buf.len() >= MAX_HEAD_SIZE {
            return Err(HttpError::TooLarge);
        }
    }
}

/// Parses `buf` if it holds a complete head, returning it with the number of bytes it took; `Ok(None)` means
/// more bytes are needed. Public so the fuzz targets and their corpus replay test drive the exact parser the
/// listener uses; servers call [`read_request_head`], which adds the socket loop and the size cap.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(buf) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(HttpError::Malformed(err)),
    };
    if consumed > MAX_HEAD_SIZE {
        return Err(HttpError::TooLarge);
    }
    let target = request.path.unwrap_or("/");
    let target = target.split('#').next().unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let head = RequestHead {
        method: request.method.unwrap_or_default().to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers: request
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    };
    Ok(Some((head, consumed)))
}

/// A small HTTP response: a status, a few headers and an optional body. Sent with `Connection: close` (except
/// a 101), since every wsmq HTTP exchange is one request per connection.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    reason: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Cow<'static, [u8]>,
}

impl Response {
    /// A response with `status` and its standard reason phrase, and no body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            reason: reason_phrase(status),
            headers: Vec::new(),
            body: Cow::Borrowed(b""),
        }
    }

    /// A response with a plain-text body, handy for errors a human may read with curl.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status).body("text/plain; charset=utf-8", body.into().into_bytes())
    }

    /// Adds a header. Values must not contain CR or LF; callers pass constants or numbers.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Sets the body and its content type.
    pub fn body(mut self, content_type: &'static str, body: impl Into<Cow<'static, [u8]>>) -> Self {
        self.headers.push(("Content-Type", content_type.to_owned()));
        self.body = body.into();
        self
    }

    /// The status code, e.g. 404.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Writes the response and flushes. Fails only on I/O errors. A `101 Switching Protocols` gets no
    /// `Content-Length` or `Connection: close`: the connection continues as a WebSocket.
    pub async fn write_to<W>(&self, writer: &mut W) -> io::Result<()>
    where
        W: AsyncWrite + Unpin,
    {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        if self.status != 101 {
            out.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n",
                self.body.len()
            ));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        writer.write_all(&bytes).await?;
        writer.flush().await
    }
}

/// The standard reason phrase of the status codes wsmq sends.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn head_is_parsed_and_leftover_kept() -> Result<(), HttpError> {
        let raw = b"GET /pushmsg?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\r\n\x81\x00";
        let (head, leftover) = read_request_head(&mut &raw[..]).await?;
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/pushmsg");
        assert_eq!(head.header("HOST"), Some("a"));
        assert!(head.has_token("connection", "upgrade"));
        assert_eq!(leftover, b"\x81\x00");
        Ok(())
    }

    #[tokio::test]
    async fn debug_of_a_head_hides_credentials() -> Result<(), HttpError> {
        let raw = b"GET /echo HTTP/1.1\r\nHost: a\r\nAuthorization: Basic YWxpY2U6aHVudGVyMg==\r\n\
                    Sec-WebSocket-Protocol: wsmq.auth.YWxpY2U6aHVudGVyMg, wsmq.v1\r\n\r\n";
        let (head, _) = read_request_head(&mut &raw[..]).await?;
        let shown = format!("{head:?}");
        assert!(
            shown.contains("host") && shown.contains("authorization"),
            "{shown}"
        );
        assert!(!shown.contains("YWxpY2U6aHVudGVyMg"), "{shown}");
        Ok(())
    }

    #[tokio::test]
    async fn oversize_head_is_rejected() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        while raw.len() <= MAX_HEAD_SIZE {
            raw.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let result = read_request_head(&mut &raw[..]).await;
        assert!(
            matches!(result, Err(HttpError::TooLarge | HttpError::Malformed(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn truncated_head_is_closed() {
        let result = read_request_head(&mut &b"GET / HTTP/1.1\r\nHost"[..]).await;
        assert!(matches!(result, Err(HttpError::Closed)), "{result:?}");
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let result = read_request_head(&mut &b"\x16\x03\x01\x00\xff garbage\r\n\r\n"[..]).await;
        assert!(matches!(result, Err(HttpError::Malformed(_))), "{result:?}");
    }

    #[tokio::test]
    async fn response_has_length_and_close() -> io::Result<()> {
        let mut out = Vec::new();
        let response = Response::text(401, "no").header("WWW-Authenticate", "Basic realm=\"wsmq\"");
        response.write_to(&mut out).await?;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("WWW-Authenticate: Basic realm=\"wsmq\"\r\n"));
        assert!(text.contains("Content-Length: 2\r\nConnection: close\r\n\r\nno"));
        Ok(())
    }
}
