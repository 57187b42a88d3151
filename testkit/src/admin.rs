//! The admin listener (plain HTTP: `/healthz`, `/readyz`, `/metrics`) as a test sees it.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wait::{eventually, within};

/// One plain-HTTP request without a body (`GET`, or `POST` for an admin action) to the admin listener at
/// `admin`, within the bound; returns the status and the body.
pub async fn request(admin: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(admin).await?;
        let head =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = within(&format!("the admin response to {method} {path}"), exchange).await??;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the head")?;
    let status = head.split(' ').nth(1).context("no status line")?;
    Ok((status.parse()?, body.to_owned()))
}

/// The HTTP status of `GET path` on the admin listener at `admin`, within the bound.
pub async fn http_status(admin: SocketAddr, path: &str) -> anyhow::Result<u16> {
    Ok(request(admin, "GET", path).await?.0)
}

/// Waits (bounded, polling) until `/readyz` on `admin` answers `status`: readiness has no signal a test could
/// await instead.
pub async fn await_readyz(admin: SocketAddr, status: u16) -> anyhow::Result<()> {
    eventually(&format!("/readyz to answer {status}"), || async {
        http_status(admin, "/readyz")
            .await
            .is_ok_and(|s| s == status)
    })
    .await?;
    Ok(())
}
