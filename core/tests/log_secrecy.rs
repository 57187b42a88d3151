//! No password or token reaches the logs at any level: real dials with Basic credentials (right and wrong), a
//! browser-style subprotocol token and bearer tokens (header and subprotocol) against a real listener, logged through the subscriber the binaries install, at trace level
//! for every target, into a buffer that is then searched for the passwords in every encoding they travel in.
//!
//! Its own test binary: it installs the process-wide subscriber (the `log` records of dependencies can only be
//! routed to a global one).

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use tracing_subscriber::util::SubscriberInitExt;
use wsmq_core::Secret;
use wsmq_core::auth::Credentials;
use wsmq_core::dial::{DialError, Dialer};
use wsmq_core::logging::{self, LogFormat};

/// A wrong password that is as distinctive as the right one, so a leak of either is found.
const WRONG_PASSWORD: &str = "battery staple guess";
/// A bearer token, refused without an auth callout; it must not be logged either.
const BEARER_TOKEN: &str = "bearer-token-that-must-never-be-logged";

#[tokio::test]
async fn passwords_never_reach_the_logs_even_at_trace_level() -> TestResult {
    let captured = Captured::default();
    let writer = captured.clone();
    let (dispatch, invalid) =
        logging::dispatch(LogFormat::Human, Some("trace"), move || writer.clone());
    assert!(invalid.is_none());
    dispatch.try_init()?;
    tracing::trace!("trace level is on");

    let server = start(test_limits()).await?;
    let url = format!("wss://localhost:{}", server.addr.port());
    let good = Dialer::new(&url, good_credentials(), server.client_tls.clone())?;
    let (mut ws, _) = good.dial("/echo").await?;
    assert_eq!(next_text(&mut ws).await?, "alice /echo compat");
    assert_eq!(round_trip(&mut ws, "hello").await?, "hello");
    drop(ws);

    let wrong = Credentials::new(USER, Secret::new(WRONG_PASSWORD));
    let refused = Dialer::new(&url, wrong.clone(), server.client_tls.clone())?
        .dial("/echo")
        .await;
    assert!(
        matches!(refused, Err(DialError::Unauthorized { .. })),
        "{refused:?}"
    );

    let token = good_credentials().subprotocol_token();
    let (mut browser, _) = server
        .ws_connect(
            "/echo",
            &[("Sec-WebSocket-Protocol", format!("{token}, wsmq.v1"))],
        )
        .await?;
    assert_eq!(next_text(&mut browser).await?, "alice /echo wsmq.v1");
    drop(browser);

    for header in [
        ("Authorization", format!("Bearer {BEARER_TOKEN}")),
        (
            "Sec-WebSocket-Protocol",
            format!("wsmq.v1, wsmq.bearer.{BEARER_TOKEN}"),
        ),
    ] {
        let response = server
            .raw_request(&server.upgrade_request("/echo", &[header]))
            .await?;
        assert_eq!(status(&response), Some(401), "{response}");
    }
    server.stop().await?;

    let logs = captured.text();
    assert!(
        logs.contains("trace level is on"),
        "trace logging was not active:\n{logs}"
    );
    assert!(
        !logs.contains(BEARER_TOKEN),
        "the logs contain the bearer token:\n{logs}"
    );
    for password in [PASSWORD, WRONG_PASSWORD] {
        let joined = format!("{USER}:{password}");
        for secret in [
            password.to_owned(),
            STANDARD.encode(&joined),
            URL_SAFE_NO_PAD.encode(&joined),
        ] {
            assert!(
                !logs.contains(&secret),
                "the logs contain {secret:?}:\n{}",
                logs.lines()
                    .filter(|line| line.contains(&secret))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    Ok(())
}
