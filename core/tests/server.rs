//! The TLS WebSocket listener against real clients on loopback: authentication, routing, origins, limits,
//! timeouts, bad input, subprotocols and shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use wsmq_core::limits::Limits;
use wsmq_core::metrics::RejectReason;
use wsmq_core::server::Accepted;

#[tokio::test]
async fn authenticated_client_is_upgraded_and_echoed() -> TestResult {
    let server = start(test_limits()).await?;
    let (mut ws, greeting) = server.ws_connect_good().await?;
    assert_eq!(greeting, "alice /echo compat");
    assert_eq!(round_trip(&mut ws, "hello").await?, "hello");
    assert_eq!(server.metrics.open(), 1);
    server.stop().await
}

#[tokio::test]
async fn missing_credentials_get_401_with_www_authenticate() -> TestResult {
    let server = start(test_limits()).await?;
    let response = server
        .raw_request(&server.upgrade_request("/echo", &[]))
        .await?;
    assert_eq!(status(&response), Some(401), "{response}");
    assert!(
        response.contains("WWW-Authenticate: Basic realm=\"wsmq\"\r\n"),
        "{response}"
    );
    assert!(!response.contains("101"), "{response}");
    let metrics = server.metrics.clone();
    server.stop().await?;
    assert_eq!(metrics.rejected(RejectReason::Auth), 1);
    Ok(())
}

#[tokio::test]
async fn wrong_password_gets_401_with_www_authenticate() -> TestResult {
    let server = start(test_limits()).await?;
    let auth = ("Authorization", wrong_credentials().basic_header());
    let response = server
        .raw_request(&server.upgrade_request("/echo", &[auth]))
        .await?;
    assert_eq!(status(&response), Some(401), "{response}");
    assert!(
        response.contains("WWW-Authenticate: Basic realm=\"wsmq\"\r\n"),
        "{response}"
    );
    let result = server
        .ws_connect(
            "/echo",
            &[("Authorization", wrong_credentials().basic_header())],
        )
        .await;
    assert!(
        matches!(&result, Err(tungstenite::Error::Http(r)) if r.status() == 401),
        "{result:?}"
    );
    server.stop().await
}

#[tokio::test]
async fn plain_get_on_websocket_path_gets_400() -> TestResult {
    let server = start(test_limits()).await?;
    let auth = good_credentials().basic_header();
    let head = format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nAuthorization: {auth}\r\n\r\n");
    let response = server.raw_request(&head).await?;
    assert_eq!(status(&response), Some(400), "{response}");
    let metrics = server.metrics.clone();
    server.stop().await?;
    assert_eq!(metrics.rejected(RejectReason::BadRequest), 1);
    Ok(())
}

#[tokio::test]
async fn unknown_path_gets_404() -> TestResult {
    let server = start(test_limits()).await?;
    let auth = ("Authorization", good_credentials().basic_header());
    let response = server
        .raw_request(&server.upgrade_request("/nope", &[auth]))
        .await?;
    assert_eq!(status(&response), Some(404), "{response}");
    let metrics = server.metrics.clone();
    server.stop().await?;
    assert_eq!(metrics.rejected(RejectReason::NotFound), 1);
    Ok(())
}

#[tokio::test]
async fn page_route_serves_its_page_without_credentials() -> TestResult {
    let server = start(test_limits()).await?;
    let response = server
        .raw_request("GET /?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    assert_eq!(status(&response), Some(200), "{response}");
    assert!(
        response.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{response}"
    );
    assert!(response.ends_with(std::str::from_utf8(PAGE)?), "{response}");
    server.stop().await
}

#[tokio::test]
async fn foreign_origin_gets_403_and_own_origin_is_allowed() -> TestResult {
    let server = start(test_limits()).await?;
    let auth = ("Authorization", good_credentials().basic_header());
    let evil = ("Origin", "https://evil.example".to_owned());
    let response = server
        .raw_request(&server.upgrade_request("/echo", &[auth.clone(), evil]))
        .await?;
    assert_eq!(status(&response), Some(403), "{response}");

    let own = (
        "Origin",
        format!("https://localhost:{}", server.addr.port()),
    );
    let (_ws, response) = server.ws_connect("/echo", &[auth, own]).await?;
    assert_eq!(response.status(), 101);
    let metrics = server.metrics.clone();
    server.stop().await?;
    assert_eq!(metrics.rejected(RejectReason::Origin), 1);
    Ok(())
}

#[tokio::test]
async fn configured_origins_replace_the_default_list() -> TestResult {
    let server = start_with(test_limits(), |config| {
        config.allowed_origins = vec!["https://App.example/".to_owned()];
    })
    .await?;
    let auth = ("Authorization", good_credentials().basic_header());
    let own = (
        "Origin",
        format!("https://localhost:{}", server.addr.port()),
    );
    let response = server
        .raw_request(&server.upgrade_request("/echo", &[auth.clone(), own]))
        .await?;
    assert_eq!(status(&response), Some(403), "{response}");
    let (_ws, response) = server
        .ws_connect(
            "/echo",
            &[auth, ("Origin", "https://app.example".to_owned())],
        )
        .await?;
    assert_eq!(response.status(), 101);
    server.stop().await
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() -> TestResult {
    let server = start(Limits {
        max_connections: 1,
        ..test_limits()
    })
    .await?;
    let (mut first, _) = server.ws_connect_good().await?;
    let auth = ("Authorization", good_credentials().basic_header());
    let response = server
        .raw_request(&server.upgrade_request("/echo", &[auth]))
        .await?;
    assert_eq!(status(&response), Some(503), "{response}");
    assert_eq!(
        round_trip(&mut first, "still served").await?,
        "still served"
    );
    let metrics = server.metrics.clone();
    server.stop().await?;
    assert_eq!(metrics.rejected(RejectReason::Limit), 1);
    Ok(())
}

#[tokio::test]
async fn slowloris_is_dropped_at_the_handshake_timeout() -> TestResult {
    let timeout = Duration::from_millis(300);
    let server = start(Limits {
        handshake_timeout: timeout,
        ..test_limits()
    })
    .await?;

    let started = Instant::now();
    let mut tls = server.tls_connect().await?;
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n")
        .await?;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(STEP, tls.read_to_end(&mut rest)).await?;
    assert!(
        read.is_err() || rest.is_empty(),
        "server answered a half request: {rest:?}"
    );
    assert!(
        started.elapsed() >= timeout,
        "dropped after {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await?;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(STEP, silent.read(&mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= timeout);

    let (mut ws, _) = server.ws_connect_good().await?;
    assert_eq!(round_trip(&mut ws, "after").await?, "after");
    let metrics = server.metrics.clone();
    server.stop().await?;
    assert_eq!(metrics.rejected(RejectReason::HandshakeTimeout), 2);
    Ok(())
}

#[tokio::test]
async fn non_tls_bytes_and_tls_garbage_do_not_disturb_the_server() -> TestResult {
    let server = start(test_limits()).await?;
    let garbage: [&[u8]; 3] = [
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage garbage garbage",
        &[0xff; 512],
    ];
    for bytes in garbage {
        let mut tcp = TcpStream::connect(server.addr).await?;
        tcp.write_all(bytes).await?;
        tcp.shutdown().await?;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(STEP, tcp.read_to_end(&mut sink)).await?;
    }
    let (mut ws, _) = server.ws_connect_good().await?;
    assert_eq!(round_trip(&mut ws, "fine").await?, "fine");
    let metrics = server.metrics.clone();
    server.stop().await?;
    assert_eq!(metrics.rejected(RejectReason::Tls), 3);
    Ok(())
}

#[tokio::test]
async fn oversize_message_is_closed_with_1009() -> TestResult {
    let server = start(Limits {
        max_message_size: 1024,
        ..test_limits()
    })
    .await?;
    let (mut ws, _) = server.ws_connect_good().await?;
    assert_eq!(round_trip(&mut ws, &"a".repeat(1024)).await?.len(), 1024);
    let _ = ws.send(Message::Text("b".repeat(4096).into())).await;
    assert_eq!(close_code(&mut ws).await?, 1009);
    server.stop().await
}

#[tokio::test]
async fn oversize_frame_is_closed_with_1009_before_its_payload_is_read() -> TestResult {
    let limits = Limits {
        max_message_size: 1024,
        max_frame_size: 1024,
        ..test_limits()
    };
    let server = start(limits).await?;
    let (mut ws, _) = server.ws_connect_good().await?;
    let _ = ws.send(Message::Binary(vec![7u8; 256 * 1024].into())).await;
    assert_eq!(close_code(&mut ws).await?, 1009);
    server.stop().await
}

#[tokio::test]
async fn subprotocol_spoken_by_the_route_is_answered() -> TestResult {
    let server = start(test_limits()).await?;
    let auth = ("Authorization", good_credentials().basic_header());
    let offered = ("Sec-WebSocket-Protocol", "chat, wsmq.v1".to_owned());
    let (mut ws, response) = server.ws_connect("/echo", &[auth, offered]).await?;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"wsmq.v1"[..])
    );
    assert_eq!(next_text(&mut ws).await?, "alice /echo wsmq.v1");
    server.stop().await
}

#[tokio::test]
async fn auth_token_subprotocol_authenticates_and_is_never_echoed() -> TestResult {
    let server = start(test_limits()).await?;
    let token = good_credentials().subprotocol_token();
    let offered = ("Sec-WebSocket-Protocol", format!("{token}, wsmq.v1"));
    let (mut ws, response) = server.ws_connect("/echo", &[offered]).await?;
    let answered: Vec<_> = response
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .collect();
    assert_eq!(answered, vec!["wsmq.v1"]);
    assert_eq!(next_text(&mut ws).await?, "alice /echo wsmq.v1");

    let offered = (
        "Sec-WebSocket-Protocol",
        wrong_credentials().subprotocol_token(),
    );
    let response = server
        .raw_request(&server.upgrade_request("/echo", &[offered]))
        .await?;
    assert_eq!(status(&response), Some(401), "{response}");

    let offered = ("Sec-WebSocket-Protocol", token.clone());
    let response = server
        .raw_request(&server.upgrade_request("/echo", &[offered]))
        .await?;
    assert_eq!(status(&response), Some(101), "{response}");
    assert!(
        !response
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol"),
        "{response}"
    );
    assert!(!response.contains(&token), "{response}");
    server.stop().await
}

#[tokio::test]
async fn no_matching_subprotocol_means_compat_mode() -> TestResult {
    let server = start(test_limits()).await?;
    let auth = ("Authorization", good_credentials().basic_header());
    let offered = ("Sec-WebSocket-Protocol", "wsmq.v9".to_owned());
    let response = server
        .raw_request(&server.upgrade_request("/echo", &[auth.clone(), offered]))
        .await?;
    assert_eq!(status(&response), Some(101), "{response}");
    assert!(
        !response
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol"),
        "{response}"
    );
    let (mut ws, _) = server.ws_connect("/echo", &[auth]).await?;
    assert_eq!(next_text(&mut ws).await?, "alice /echo compat");
    server.stop().await
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_and_serve_returns_within_the_drain_timeout()
-> TestResult {
    let limits = test_limits();
    let drain = limits.drain_timeout;
    let server = start(limits).await?;
    let (mut first, _) = server.ws_connect_good().await?;
    let (mut second, _) = server.ws_connect_good().await?;
    let started = Instant::now();
    server.shutdown.cancel();
    assert_eq!(close_code(&mut first).await?, 1001);
    assert_eq!(close_code(&mut second).await?, 1001);
    drop((first, second));
    tokio::time::timeout(drain + Duration::from_secs(1), server.task).await???;
    assert!(started.elapsed() < drain + Duration::from_secs(1));
    Ok(())
}

#[tokio::test]
async fn shutdown_gives_up_on_handlers_that_ignore_it_after_the_drain_timeout() -> TestResult {
    let drain = Duration::from_millis(300);
    let (entered_tx, mut entered_rx) = mpsc::channel::<()>(1);
    let stubborn = move |accepted: Accepted| {
        let entered_tx = entered_tx.clone();
        async move {
            let _keep = accepted.ws;
            let _ = entered_tx.send(()).await;
            std::future::pending::<()>().await;
        }
    };
    let limits = Limits {
        drain_timeout: drain,
        ..test_limits()
    };
    let server = start_custom(limits, |_| {}, stubborn).await?;
    let auth = ("Authorization", good_credentials().basic_header());
    let _client = server.ws_connect("/echo", &[auth]).await?;
    tokio::time::timeout(STEP, entered_rx.recv())
        .await?
        .ok_or("handler never ran")?;
    let started = Instant::now();
    server.stop().await?;
    assert!(
        started.elapsed() >= drain,
        "returned after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_bearer_token_without_an_auth_callout_gets_401_saying_why() -> TestResult {
    let server = start(test_limits()).await?;
    for header in [
        ("Authorization", "Bearer some-token".to_owned()),
        (
            "Sec-WebSocket-Protocol",
            "wsmq.v1, wsmq.bearer.some-token".to_owned(),
        ),
    ] {
        let response = server
            .raw_request(&server.upgrade_request("/echo", &[header]))
            .await?;
        assert_eq!(status(&response), Some(401), "{response}");
        assert!(
            response.contains("bearer tokens are only accepted with an auth callout (--auth-url)"),
            "{response}"
        );
    }
    server.stop().await
}

#[tokio::test]
async fn denied_callouts_count_in_the_login_throttle_and_are_measured() -> TestResult {
    use wsmq_core::auth::Authenticator;
    use wsmq_core::callout::{AuthCallout, CalloutConfig};
    use wsmq_core::metrics::CalloutOutcome;

    let auth_dir = tempfile::tempdir()?;
    let endpoint = wsmq_testkit::auth_server::AuthServer::start(auth_dir.path(), |_| {
        (
            200,
            r#"{"allow":false,"reason":"no such token"}"#.to_owned(),
        )
    })
    .await?;
    let callout = AuthCallout::new(&CalloutConfig {
        ca: Some(endpoint.ca.clone()),
        ..CalloutConfig::new(&endpoint.url)
    })?;
    let server = start_with(test_limits(), |config| {
        config.auth = Authenticator::with_callout(callout, "subscriber");
    })
    .await?;
    let bearer = || ("Authorization", "Bearer guessed-token".to_owned());
    for attempt in 1..=5 {
        let response = server
            .raw_request(&server.upgrade_request("/echo", &[bearer()]))
            .await?;
        assert_eq!(
            status(&response),
            Some(401),
            "attempt {attempt}: {response}"
        );
        assert!(response.contains("no such token"), "{response}");
    }
    let response = server
        .raw_request(&server.upgrade_request("/echo", &[bearer()]))
        .await?;
    assert_eq!(status(&response), Some(429), "{response}");
    assert_eq!(
        endpoint.request_count(),
        5,
        "a throttled attempt is not sent"
    );
    let metrics = server.metrics.clone();
    server.stop().await?;
    assert_eq!(metrics.callouts(CalloutOutcome::Denied), 5);
    assert_eq!(metrics.rejected(RejectReason::Throttled), 1);
    Ok(())
}
