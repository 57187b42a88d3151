//! A real HTTPS auth-callout endpoint on loopback (hyper, the development PKI of a data dir), answering what the
//! test tells it: how the edges' `--auth-url` is tested against a real server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use wsmq_core::tls;

/// Decides the answer to one callout from its JSON body: `(status, reply body)`.
pub type Decide = dyn Fn(&serde_json::Value) -> (u16, String) + Send + Sync;

/// The endpoint, serving until dropped or [`AuthServer::stop`]ped.
pub struct AuthServer {
    /// `https://127.0.0.1:<port>/wsmq/auth`, for `--auth-url`.
    pub url: String,
    /// The CA its certificate chains to, for `--auth-ca`.
    pub ca: PathBuf,
    /// Every request body received, in order.
    pub requests: Arc<Mutex<Vec<serde_json::Value>>>,
    task: JoinHandle<()>,
}

impl AuthServer {
    /// Starts the endpoint with the development PKI of `data_dir` (created if missing).
    pub async fn start(
        data_dir: &Path,
        decide: impl Fn(&serde_json::Value) -> (u16, String) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let pki = tls::ensure_dev_pki(data_dir)?;
        let acceptor = TlsAcceptor::from(tls::server_config(None, None, data_dir)?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let decide: Arc<Decide> = Arc::new(decide);
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, decide, seen) = (acceptor.clone(), decide.clone(), seen.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (decide, seen) = (decide.clone(), seen.clone());
                        async move {
                            let body = match request.into_body().collect().await {
                                Ok(body) => body.to_bytes(),
                                Err(_) => Bytes::new(),
                            };
                            let json =
                                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                            let (status, reply) = decide(&json);
                            seen.lock().push(json);
                            let mut response = Response::new(Full::new(Bytes::from(reply)));
                            *response.status_mut() =
                                StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            url: format!("https://127.0.0.1:{}/wsmq/auth", addr.port()),
            ca: pki.ca_cert,
            requests,
            task,
        })
    }

    /// How many callouts it answered.
    pub fn request_count(&self) -> usize {
        self.requests.lock().len()
    }

    /// Stops listening and drops every open connection: the endpoint is down.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
