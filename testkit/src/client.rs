//! A test's WebSocket client of a service: dialed as a real client would (TLS verified against the development
//! CA, Basic credentials), and readers for the next frame of a kind that skip keepalives and fail on anything
//! else, each within [`STEP`](crate::STEP).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::auth::Credentials;
use wsmq_core::dial::{ClientWs, Dialer};

use crate::wait::within;

/// TLS settings of a client that trusts the development CA in `data_dir`, as a service's link does by default.
pub fn client_tls(data_dir: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(wsmq_core::tls::client_config(None, Some(data_dir), false)?)
}

/// A dialer for the service at `url` (`wss://localhost:<port>`), trusting the development CA in `data_dir`,
/// offering `subprotocol` if any (`None` is exactly what a ws-go client offers).
pub fn dialer(
    url: &str,
    data_dir: &Path,
    credentials: Credentials,
    subprotocol: Option<&'static str>,
) -> anyhow::Result<Dialer> {
    let dialer = Dialer::new(url, credentials, client_tls(data_dir)?)?;
    Ok(match subprotocol {
        Some(subprotocol) => dialer.with_subprotocol(subprotocol),
        None => dialer,
    })
}

/// Dials `path` with `dialer` within the bound and checks that the server chose `subprotocol` (`None`: compat).
pub async fn connect(
    dialer: &Dialer,
    path: &str,
    subprotocol: Option<&str>,
) -> anyhow::Result<ClientWs> {
    let (ws, negotiated) = within(&format!("a dial of {path}"), dialer.dial(path)).await??;
    if negotiated.as_deref() != subprotocol {
        bail!("{path} negotiated {negotiated:?}, expected {subprotocol:?}");
    }
    Ok(ws)
}

/// Sends a text frame, within the bound.
pub async fn send_text<S>(ws: &mut S, text: &str) -> anyhow::Result<()>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    within("a send", ws.send(Message::text(text))).await??;
    Ok(())
}

/// The next text frame, skipping pings and pongs; anything else (binary, close, end, error) fails. One bound
/// covers the whole wait, so a frame that never comes fails even while the server keeps pinging.
pub async fn next_text<S>(ws: &mut S) -> anyhow::Result<String>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    within("a text frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => bail!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await?
}

/// The next data (text or binary) frame, skipping pings and pongs; anything else fails.
pub async fn next_data<S>(ws: &mut S) -> anyhow::Result<Message>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    within("a data frame", async {
        loop {
            match ws.next().await {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => return Ok(message),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => bail!("expected a data frame, got {other:?}"),
            }
        }
    })
    .await?
}

/// Reads until the server's Close frame and returns its code, skipping data and keepalives before it; a
/// connection that ends without one, or a Close without a code, fails.
pub async fn close_code<S>(ws: &mut S) -> anyhow::Result<CloseCode>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    within("a close frame", async {
        loop {
            match ws.next().await.context("ended without a close frame")?? {
                Message::Close(Some(frame)) => return Ok(frame.code),
                Message::Close(None) => bail!("close frame without a code"),
                _ => {}
            }
        }
    })
    .await?
}

/// What a handshake with hand-picked headers got: the WebSocket and the subprotocol the server chose, or the
/// HTTP status it refused with.
pub enum Handshake {
    /// Upgraded (boxed: a TLS WebSocket is large).
    Upgraded(Box<ClientWs>, Option<String>),
    /// Refused with this status before the upgrade.
    Refused(u16),
}

/// Opens a WebSocket to `path` on `localhost:port` with exactly `headers` (no credentials unless given: e.g.
/// `Authorization: Bearer …`, or `Sec-WebSocket-Protocol: wsmq.v1, wsmq.bearer.…` as a browser sends), trusting
/// the development CA in `data_dir`, within the bound.
pub async fn handshake(
    port: u16,
    data_dir: &Path,
    path: &str,
    headers: &[(&'static str, &str)],
) -> anyhow::Result<Handshake> {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("wss://localhost:{port}{path}").into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse()?);
    }
    let connector = tokio_rustls::TlsConnector::from(client_tls(data_dir)?);
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = connector.connect(name, tcp).await?;
        anyhow::Ok(match tokio_tungstenite::client_async(request, tls).await {
            Ok((ws, response)) => {
                let chosen = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                Handshake::Upgraded(Box::new(ws), chosen)
            }
            Err(tungstenite::Error::Http(response)) => {
                Handshake::Refused(response.status().as_u16())
            }
            Err(other) => return Err(other.into()),
        })
    };
    within(&format!("a handshake on {path}"), attempt).await?
}
