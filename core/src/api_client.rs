//! A client of a service's HTTP API (the publisher's `/v1/publish`, msgqueue's `/v1/history`): one keep-alive HTTP/1.1 connection over
//! TLS, dialed with a [`Dialer`] (so it verifies the server exactly as links do) and built on hyper's client
//! connection. `wsmq-bench http` and the tests use it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::dial::{DialError, Dialer};

/// Why an API request got no response.
#[derive(Debug, Error)]
pub enum ApiClientError {
    /// The connection could not be opened.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// HTTP failed on the connection (it is then closed).
    #[error("HTTP exchange failed")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a header value that is not valid in HTTP).
    #[error("invalid request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct ApiReply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl ApiReply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One keep-alive connection to an API: requests go one after another on it.
#[derive(Debug)]
pub struct ApiClient {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    authorization: HeaderValue,
    connection: JoinHandle<()>,
}

impl Drop for ApiClient {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl ApiClient {
    /// Opens a connection to `dialer`'s server; requests carry its credentials as `Authorization: Basic`.
    pub async fn connect(dialer: &Dialer) -> Result<Self, ApiClientError> {
        let tls = dialer.connect_tls().await?;
        let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
        let connection = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "API client connection ended");
            }
        });
        let mut authorization = HeaderValue::from_str(&dialer.credentials().basic_header())
            .map_err(hyper::http::Error::from)?;
        authorization.set_sensitive(true);
        Ok(Self {
            sender,
            authority: dialer.authority().to_owned(),
            authorization,
            connection,
        })
    }

    /// Whether the server closed the connection (no further request can be sent on it).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// `POST`s a JSON `body` to `path` with the credentials and `headers`, and reads the whole response.
    pub async fn post_json(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<ApiReply, ApiClientError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, self.authorization.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Full::new(body.into()))?).await
    }

    /// `GET`s `path` (with its query) with the credentials and reads the whole response.
    pub async fn get(&mut self, path: &str) -> Result<ApiReply, ApiClientError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .body(Full::new(Bytes::new()))?;
        self.send(request).await
    }

    /// Sends `request` as it is (only `Host` is added) and reads the whole response: for requests without the
    /// credentials or with other methods and headers.
    pub async fn send(
        &mut self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<ApiReply, ApiClientError> {
        if !request.headers().contains_key(header::HOST) {
            let host = HeaderValue::from_str(&self.authority).map_err(hyper::http::Error::from)?;
            request.headers_mut().insert(header::HOST, host);
        }
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(ApiReply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
