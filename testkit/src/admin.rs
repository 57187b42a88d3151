//! The admin listener (plain HTTP: `/healthz`, `/readyz`, `/metrics`) as a test sees it.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wait::{eventually, within};

/// The HTTP status of `GET path` on the admin listener at `admin`, within the bound.
pub async fn http_status(admin: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(admin).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = within(&format!("the admin response to {path}"), exchange).await??;
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).context("no status line")?;
    Ok(status.parse()?)
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
