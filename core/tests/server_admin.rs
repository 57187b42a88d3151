//! The admin listener over plain HTTP on loopback: liveness, readiness and Prometheus metrics.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{STEP, TestResult, status};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use wsmq_core::admin::{Readiness, serve_admin};
use wsmq_core::metrics::{ListenerMetrics, RejectReason};

/// `GET path` against the admin listener; returns the whole response.
async fn get(addr: SocketAddr, path: &str) -> TestResult<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(STEP, tcp.read_to_end(&mut response)).await??;
    Ok(String::from_utf8(response)?)
}

#[tokio::test]
async fn admin_reports_health_readiness_and_metrics() -> TestResult {
    let mut registry = Registry::with_prefix("wsmq_test");
    let metrics = ListenerMetrics::register(&mut registry, "listener");
    metrics.reject(RejectReason::Auth);
    let readiness = Readiness::new();
    let link = readiness.condition("queue link");
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_admin(
        listener,
        Arc::new(registry),
        readiness,
        shutdown.clone(),
    ));

    assert_eq!(status(&get(addr, "/healthz").await?), Some(200));
    let not_ready = get(addr, "/readyz").await?;
    assert_eq!(status(&not_ready), Some(503), "{not_ready}");
    assert!(
        not_ready.ends_with("not ready: queue link\n"),
        "{not_ready}"
    );
    link.set_ready(true);
    assert_eq!(status(&get(addr, "/readyz").await?), Some(200));

    let scraped = get(addr, "/metrics").await?;
    assert_eq!(status(&scraped), Some(200), "{scraped}");
    assert!(
        scraped.contains(
            "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        )
    );
    assert!(
        scraped.contains("wsmq_test_listener_connections_rejected_total{reason=\"auth\"} 1"),
        "{scraped}"
    );
    assert!(
        scraped.contains("wsmq_test_listener_connections_open 0"),
        "{scraped}"
    );
    assert!(scraped.trim_end().ends_with("# EOF"), "{scraped}");
    assert_eq!(scraped.matches("# EOF").count(), 1, "{scraped}");
    if cfg!(target_os = "linux") {
        let rss: f64 = scraped
            .lines()
            .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
            .ok_or("no process_resident_memory_bytes sample")?
            .parse()?;
        assert!(rss > 0.0, "{scraped}");
    }

    assert_eq!(status(&get(addr, "/nope").await?), Some(404));
    shutdown.cancel();
    tokio::time::timeout(STEP, task).await???;
    Ok(())
}
