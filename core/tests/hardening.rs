//! The listener against hostile clients on loopback: half-open connections, parallel password guessing and a
//! peer that floods pings without reading. Each test fails on a listener without the defence it names.

mod common;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use futures_util::future::join_all;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wsmq_core::Secret;
use wsmq_core::auth::{Authenticator, FAILURE_INTERVAL};
use wsmq_core::limits::Limits;
use wsmq_core::metrics::RejectReason;

/// Where the attacker's connections come from; the real client uses 127.0.0.1.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test]
async fn idle_half_open_connections_cannot_lock_out_real_clients() -> TestResult {
    let handshake_timeout = Duration::from_secs(8);
    let server = start(Limits {
        max_connections: 5,
        max_handshakes: 64,
        max_handshakes_per_ip: 8,
        handshake_timeout,
        ..test_limits()
    })
    .await?;

    // More idle TCP connections than --max-connections, none of which ever starts TLS.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(server.tcp_connect_from(ATTACKER).await?);
    }

    // A real client, from another address, still gets in while all of them are held open.
    let started = Instant::now();
    let (mut ws, greeting) = server
        .ws_connect_good_from(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await?;
    assert_eq!(greeting, "alice /echo compat");
    assert_eq!(
        round_trip(&mut ws, "not locked out").await?,
        "not locked out"
    );
    assert!(started.elapsed() < handshake_timeout);

    // The attacker's connections beyond its per-address share were dropped at once, not at the timeout.
    let mut dropped = 0;
    for tcp in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut byte)).await
        {
            dropped += 1;
        }
    }
    assert_eq!(dropped, 12, "connections dropped early");
    assert!(started.elapsed() < handshake_timeout);
    let metrics = server.metrics.clone();
    drop(idle);
    server.stop().await?;
    assert_eq!(metrics.rejected(RejectReason::HandshakeLimit), 12);
    assert_eq!(metrics.rejected(RejectReason::Limit), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_password_guessing_from_one_address_is_rate_limited() -> TestResult {
    let hash = bcrypt::hash(PASSWORD, 4)?;
    let auth = Authenticator::from_users(&Secret::new(format!("{USER}:{hash}")))?;
    let counted = auth.clone();
    // Generous: 30 TLS handshakes at once in a debug build on a loaded machine take seconds.
    let limits = Limits {
        handshake_timeout: Duration::from_secs(60),
        ..test_limits()
    };
    let limits_bound = limits.handshake_timeout;
    let server = start_with(limits, move |config| config.auth = auth).await?;

    let guesses = 30;
    let started = Instant::now();
    let request = server.upgrade_request(
        "/echo",
        &[("Authorization", wrong_credentials().basic_header())],
    );
    // The bound covers all the handshakes at once, which take far longer than one does on a loaded machine.
    let responses =
        join_all((0..guesses).map(|_| server.raw_request_within(&request, limits_bound))).await;
    let elapsed = started.elapsed();
    let mut statuses = Vec::new();
    for response in responses {
        statuses.push(status(&response?));
    }

    // Every guess was answered: 401 for those checked, 429 for those refused unchecked.
    assert!(
        statuses.iter().all(|s| matches!(s, Some(401 | 429))),
        "{statuses:?}"
    );
    assert!(statuses.contains(&Some(429)), "{statuses:?}");
    // Checked at most: the free burst, one per bcrypt slot already running when the burst was used up, and one
    // per interval since.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let allowed = 5 + cpus + (elapsed.as_secs_f64() / FAILURE_INTERVAL.as_secs_f64()).ceil() as u64;
    let checked = counted.bcrypt_verifications();
    writeln!(
        std::io::stdout(),
        "{checked} of {guesses} parallel guesses had their password checked in {elapsed:?} (limit {allowed})"
    )?;
    assert!(
        checked <= allowed,
        "{checked} of {guesses} parallel guesses were checked in {elapsed:?} (allowed {allowed})"
    );

    // The right password from another address is not affected.
    let (mut ws, greeting) = server.ws_connect_good_from(ATTACKER).await?;
    assert_eq!(greeting, "alice /echo compat");
    assert_eq!(round_trip(&mut ws, "welcome").await?, "welcome");
    let metrics = server.metrics.clone();
    server.stop().await?;
    assert!(metrics.rejected(RejectReason::Throttled) > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_pings_without_reading_is_closed_and_its_buffers_stay_bounded() -> TestResult
{
    let server = start(test_limits()).await?;
    // A client that never reads: its small receive window makes the server's replies back up quickly.
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = tokio::time::timeout(STEP, socket.connect(server.addr)).await??;
    let tls = server.tls_over(tcp).await?;
    let mut request =
        format!("wss://localhost:{}/echo", server.addr.port()).into_client_request()?;
    request.headers_mut().append(
        "Authorization",
        HeaderValue::from_str(&good_credentials().basic_header())?,
    );
    let connect = tokio_tungstenite::client_async_with_config(request, tls, None);
    let (mut ws, _) = tokio::time::timeout(STEP, connect).await??;
    // The server counts the connection as open just after it sent the 101 the client already has.
    let metrics = server.metrics.clone();
    wsmq_testkit::eventually("the connection counted as open", || {
        let metrics = metrics.clone();
        async move { metrics.open() == 1 }
    })
    .await?;

    // Up to 32 MiB of pongs owed; a server that buffers them all never closes the connection.
    let max_pings = 256 * 1024;
    let payload = Bytes::from(vec![b'p'; 125]);
    let started = Instant::now();
    let mut sent = 0;
    let flood = async {
        while sent < max_pings {
            ws.feed(Message::Ping(payload.clone())).await?;
            sent += 1;
            if sent % 64 == 0 {
                ws.flush().await?;
            }
        }
        ws.flush().await
    };
    let flooded = tokio::time::timeout(Duration::from_secs(60), flood).await;
    assert!(
        matches!(flooded, Ok(Err(_))),
        "the server was still reading after {sent} pings in {:?}: {flooded:?}",
        started.elapsed()
    );

    // The connection task ended, so whatever it buffered is freed.
    let deadline = Instant::now() + STEP;
    while server.metrics.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.metrics.open(), 0, "connection task still running");
    writeln!(
        std::io::stdout(),
        "closed after {sent} pings ({} KiB of pongs, most of them in kernel socket buffers) in {:?}",
        sent * 127 / 1024,
        started.elapsed()
    )?;
    server.stop().await
}
