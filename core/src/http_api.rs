//! HTTP API routes on the TLS listener ([`crate::server::Route::Http`]), served with hyper.
//!
//! `core::server` owns the connection up to its first request head, exactly as for a WebSocket: handshake slot,
//! TLS, the head under the handshake timeout, the connection limit and the route. A connection whose first
//! request is for an API route is then handed to hyper's HTTP/1.1 server, together with the bytes already read
//! (the head is parsed again by hyper, so nothing is lost), and kept alive for further requests. Every request is
//! authenticated here with the listener's [`Authenticator`] (so the failed-login throttle covers the API too);
//! the service's [`ApiHandler`] only sees authenticated requests. Errors are JSON: `{"error": "..."}`.
//!
//! An idle keep-alive connection is closed after the listener's idle timeout (hyper's header read timeout,
//! which runs from the moment it waits for a request head); at shutdown hyper finishes the request in progress
//! and closes.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::acl::Permissions;
use crate::auth::{AuthFailure, Authenticator, Presented, Refused};
use crate::limits::Limits;
use crate::metrics::{ListenerMetrics, RejectReason};
use crate::server::authenticate;

/// What an API handler answers: a complete, small body.
pub type ApiResponse = Response<Full<Bytes>>;

/// Largest read buffer hyper keeps per connection (request heads and body chunks), so a connection's memory
/// stays bounded whatever a client sends.
const MAX_READ_BUFFER: usize = 64 * 1024;
/// The `WWW-Authenticate` challenge of API 401s.
const WWW_AUTHENTICATE: &str = "Basic realm=\"wsmq\"";

/// One authenticated API request, handed to the service's [`ApiHandler`].
#[derive(Debug)]
pub struct ApiRequest {
    /// The request; its body is still to be read (with a limit: see `http_body_util::Limited`).
    pub request: Request<Incoming>,
    /// The authenticated user name.
    pub user: String,
    /// Permissions the auth callout granted this request's credentials (`None`: the ACL file, or everything).
    pub permissions: Option<Permissions>,
    /// The client's address.
    pub peer: SocketAddr,
}

/// A service's API: answers authenticated requests under its route's path prefix. The handler routes by path and
/// method itself and answers errors with [`error_response`], so every error a client sees has the same shape.
pub trait ApiHandler: fmt::Debug + Send + Sync + 'static {
    /// Answers one request. Never fails: every failure is a response (4xx/5xx with a JSON error).
    fn handle(self: Arc<Self>, request: ApiRequest) -> BoxFuture<'static, ApiResponse>;
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> ApiResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error response: `{"error": message}` plus the fields of `details` (a JSON object), with `status`.
pub fn error_response(
    status: StatusCode,
    message: &str,
    details: Option<serde_json::Value>,
) -> ApiResponse {
    let mut body = serde_json::json!({ "error": message });
    if let (Some(serde_json::Value::Object(details)), Some(object)) =
        (details, body.as_object_mut())
    {
        object.extend(details);
    }
    json_response(status, &body)
}

/// The credentials of an API request: `Authorization: Basic …` or `Bearer …` (the latter only meaningful with
/// the auth callout), checked as a WebSocket handshake's are.
fn presented(headers: &HeaderMap) -> Option<Presented> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(Presented::from_authorization)
}

/// Everything a served API connection needs from its listener.
#[derive(Clone, Debug)]
pub(crate) struct ApiConnection {
    pub(crate) handler: Arc<dyn ApiHandler>,
    pub(crate) auth: Authenticator,
    pub(crate) metrics: ListenerMetrics,
    pub(crate) peer: SocketAddr,
}

impl ApiConnection {
    /// Serves requests on `stream` (whose first `read` bytes were already taken from it) until the client
    /// closes, the connection idles past `limits.idle_timeout`, or `shutdown` (then the request in progress is
    /// answered first).
    pub(crate) async fn serve<S>(
        self,
        stream: S,
        read: Vec<u8>,
        limits: &Limits,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stream = TokioIo::new(Prefixed {
            prefix: Bytes::from(read),
            inner: stream,
        });
        let this = Arc::new(self);
        let service = hyper::service::service_fn(move |request| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.dispatch(request).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.idle_timeout)
            .keep_alive(true)
            .max_buf_size(MAX_READ_BUFFER);
        let connection = builder.serve_connection(stream, service);
        tokio::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            () = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = served {
            tracing::debug!(%err, "API connection ended");
        }
    }

    /// Authenticates one request and hands it to the handler.
    async fn dispatch(&self, request: Request<Incoming>) -> ApiResponse {
        let presented = presented(request.headers());
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|value| value.to_str().ok());
        let outcome = authenticate(
            &self.auth,
            &self.metrics,
            presented.as_ref(),
            self.peer,
            origin,
        )
        .await;
        match outcome {
            Ok(identity) => {
                self.handler
                    .clone()
                    .handle(ApiRequest {
                        request,
                        user: identity.user,
                        permissions: identity.permissions,
                        peer: self.peer,
                    })
                    .await
            }
            Err(Refused::Unavailable(_) | Refused::NoUserForToken) => {
                self.metrics.reject(RejectReason::AuthUnavailable);
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "authentication service unavailable, try again later",
                    None,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
                response
            }
            Err(Refused::Auth(AuthFailure::Throttled { retry_after })) => {
                self.metrics.reject(RejectReason::Throttled);
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let mut response = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed logins, try again later",
                    None,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
                response
            }
            Err(refused) => {
                self.metrics.reject(RejectReason::Auth);
                tracing::debug!(%refused, "API request not authenticated");
                let message = match refused {
                    Refused::Auth(_) => "unauthorized".to_owned(),
                    other => format!("unauthorized: {other}"),
                };
                let mut response = error_response(StatusCode::UNAUTHORIZED, &message, None);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(WWW_AUTHENTICATE),
                );
                response
            }
        }
    }
}

/// A stream some of whose bytes were already read: they are read again first. `core::server` read the first
/// request head itself to route the connection; hyper must see it too.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn prefixed_stream_reads_the_prefix_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let mut prefixed = Prefixed {
            prefix: Bytes::from_static(b"hello"),
            inner: server,
        };
        let mut read = String::new();
        prefixed.read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "hello world");
    }

    #[tokio::test]
    async fn error_responses_carry_the_message_and_their_details() {
        use http_body_util::BodyExt;

        let response = error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large",
            Some(serde_json::json!({ "limit": 10 })),
        );
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "error": "body too large", "limit": 10 })
        );
    }
}
