//! Security foundations end to end: the development PKI, TLS handshakes over loopback with each client trust
//! mode, the dialer against a small WebSocket server, and the authenticator (htpasswd parsing, verification,
//! bcrypt cache, per-address slow-down).

use std::error::Error;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use wsmq_core::Secret;
use wsmq_core::auth::{AuthError, AuthFailure, Authenticator, Credentials, FAILURE_INTERVAL};
use wsmq_core::dial::{DialError, Dialer};
use wsmq_core::protocol::{POP_PATH, PUSH_PATH};
use wsmq_core::tls::{self, TlsError};
use wsmq_testkit::config::credentials;

type TestResult = Result<(), Box<dyn Error + Send + Sync>>;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Lowest bcrypt cost, so tests stay fast; the code path is the same as for production costs.
const TEST_BCRYPT_COST: u32 = 4;

fn pki_bytes(pki: &tls::DevPki) -> std::io::Result<Vec<Vec<u8>>> {
    [
        &pki.ca_cert,
        &pki.server_cert,
        &pki.server_key,
        &pki.dir.join("ca-key.pem"),
    ]
    .into_iter()
    .map(fs::read)
    .collect()
}

// ---- development PKI ----

#[test]
fn dev_pki_is_created_once_and_reused_byte_for_byte() -> TestResult {
    let data = tempfile::tempdir()?;
    let first = tls::ensure_dev_pki(data.path())?;
    assert_eq!(first.dir, data.path().join("tls"));
    let before = pki_bytes(&first)?;
    let second = tls::ensure_dev_pki(data.path())?;
    assert_eq!(first, second);
    assert_eq!(pki_bytes(&second)?, before);
    Ok(())
}

#[test]
fn concurrent_first_starts_agree_on_one_pki() -> TestResult {
    let data = tempfile::tempdir()?;
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    tls::ensure_dev_pki(data.path())
                        .map_err(|err| err.to_string())
                        .and_then(|pki| {
                            // What this caller would serve right now, read before any other thread can change it
                            // (they cannot: the PKI is only ever written once).
                            fs::read(&pki.ca_cert).map_err(|err| err.to_string())
                        })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let final_ca = fs::read(data.path().join("tls/ca.pem"))?;
    for result in results {
        match result {
            Ok(Ok(ca)) => assert_eq!(ca, final_ca, "a caller saw a different CA"),
            Ok(Err(err)) => panic!("ensure_dev_pki failed: {err}"),
            Err(_) => panic!("ensure_dev_pki panicked"),
        }
    }
    let leftovers: Vec<_> = fs::read_dir(data.path().join("tls"))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    tls::server_config(None, None, data.path())?;
    Ok(())
}

// ---- server configuration from files ----

#[test]
fn server_config_loads_explicit_pem_files_without_touching_the_data_dir() -> TestResult {
    let source = tempfile::tempdir()?;
    let pki = tls::ensure_dev_pki(source.path())?;
    let unrelated = tempfile::tempdir()?;
    let config = tls::server_config(
        Some(&pki.server_cert),
        Some(&pki.server_key),
        unrelated.path(),
    )?;
    assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    assert!(
        !unrelated.path().join("tls").exists(),
        "explicit certificates must not create a dev PKI"
    );
    Ok(())
}

#[test]
fn mismatched_certificate_and_key_are_reported_with_both_paths() -> TestResult {
    let one = tempfile::tempdir()?;
    let other = tempfile::tempdir()?;
    let a = tls::ensure_dev_pki(one.path())?;
    let b = tls::ensure_dev_pki(other.path())?;
    let err = tls::server_config(Some(&a.server_cert), Some(&b.server_key), one.path())
        .err()
        .ok_or("mismatched key accepted")?;
    assert!(matches!(err, TlsError::KeyPair { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&a.server_cert.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&b.server_key.display().to_string()),
        "{message}"
    );
    Ok(())
}

#[test]
fn garbage_pem_files_are_reported_clearly() -> TestResult {
    let data = tempfile::tempdir()?;
    let pki = tls::ensure_dev_pki(data.path())?;
    let garbage = data.path().join("garbage.pem");
    fs::write(&garbage, "this is not PEM at all\n")?;

    let bad_cert = tls::server_config(Some(&garbage), Some(&pki.server_key), data.path())
        .err()
        .ok_or("garbage certificate accepted")?;
    assert!(
        matches!(bad_cert, TlsError::NoCertificate { .. }),
        "{bad_cert:?}"
    );
    assert!(bad_cert.to_string().contains("garbage.pem"), "{bad_cert}");

    let bad_key = tls::server_config(Some(&pki.server_cert), Some(&garbage), data.path())
        .err()
        .ok_or("garbage key accepted")?;
    assert!(bad_key.to_string().contains("private key"), "{bad_key}");
    assert!(bad_key.to_string().contains("garbage.pem"), "{bad_key}");

    let missing = data.path().join("missing.pem");
    let unreadable = tls::server_config(Some(&missing), Some(&pki.server_key), data.path())
        .err()
        .ok_or("missing certificate accepted")?;
    assert!(
        unreadable.to_string().contains("missing.pem"),
        "{unreadable}"
    );

    let bad_ca = tls::client_config(Some(&garbage), None, false)
        .err()
        .ok_or("garbage CA accepted")?;
    assert!(bad_ca.to_string().contains("garbage.pem"), "{bad_ca}");
    Ok(())
}

// ---- TLS handshakes over loopback ----

/// A TLS server on 127.0.0.1:0 that completes handshakes and then drops the connection.
async fn tls_server(config: Arc<rustls::ServerConfig>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    Ok(addr)
}

async fn handshake(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Option<Vec<u8>>, Box<dyn Error + Send + Sync>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned())?;
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(client).connect(name, tcp),
    )
    .await??;
    Ok(stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
}

#[tokio::test]
async fn client_trusting_the_dev_ca_completes_a_handshake_for_every_local_name() -> TestResult {
    let data = tempfile::tempdir()?;
    let addr = tls_server(tls::server_config(None, None, data.path())?).await?;
    let client = tls::client_config(None, Some(data.path()), false)?;
    for name in ["localhost", "127.0.0.1", "::1"] {
        let alpn = handshake(addr, client.clone(), name).await?;
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "{name}");
    }
    let explicit_ca = tls::client_config(Some(&data.path().join("tls/ca.pem")), None, false)?;
    handshake(addr, explicit_ca, "localhost").await?;
    Ok(())
}

#[tokio::test]
async fn client_trusting_only_system_roots_rejects_the_dev_certificate() -> TestResult {
    let data = tempfile::tempdir()?;
    let addr = tls_server(tls::server_config(None, None, data.path())?).await?;
    let elsewhere = tempfile::tempdir()?;
    match tls::client_config(None, Some(elsewhere.path()), false) {
        // A machine without system roots cannot trust anything: that is reported up front.
        Err(TlsError::NoTrustAnchors) => Ok(()),
        Err(err) => Err(err.into()),
        Ok(client) => {
            let err = handshake(addr, client, "localhost")
                .await
                .err()
                .ok_or("untrusted certificate accepted")?;
            let rustls_error = err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            assert!(
                matches!(rustls_error, Some(rustls::Error::InvalidCertificate(_))),
                "{err:?}"
            );
            Ok(())
        }
    }
}

#[tokio::test]
async fn insecure_client_accepts_an_untrusted_certificate() -> TestResult {
    let data = tempfile::tempdir()?;
    let addr = tls_server(tls::server_config(None, None, data.path())?).await?;
    let client = tls::client_config(None, None, true)?;
    handshake(addr, client, "not-the-right-name.example").await?;
    Ok(())
}

// ---- dialer against a small WebSocket server ----

/// A WebSocket server that accepts exactly `expected` credentials and selects `wsmq.v1` when offered.
async fn ws_server(
    config: Arc<rustls::ServerConfig>,
    expected: Credentials,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(config);
    let expected = expected.basic_header();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let expected = expected.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                #[allow(
                    clippy::result_large_err,
                    reason = "tungstenite's Callback fixes the error type"
                )]
                let callback = move |request: &Request, mut response: Response| {
                    let authorized = request
                        .headers()
                        .get(header::AUTHORIZATION)
                        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
                    if !authorized {
                        let mut refusal = ErrorResponse::new(None);
                        *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                        return Err(refusal);
                    }
                    if request
                        .headers()
                        .get(header::SEC_WEBSOCKET_PROTOCOL)
                        .is_some_and(|value| value.as_bytes() == b"wsmq.v1")
                    {
                        response.headers_mut().insert(
                            header::SEC_WEBSOCKET_PROTOCOL,
                            HeaderValue::from_static("wsmq.v1"),
                        );
                    }
                    Ok(response)
                };
                if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await {
                    let _ = ws.close(None).await;
                }
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn dialer_authenticates_and_reports_the_negotiated_subprotocol() -> TestResult {
    let data = tempfile::tempdir()?;
    let creds = Credentials::new("svc", Secret::new("s3cret:with:colons"));
    let addr = ws_server(tls::server_config(None, None, data.path())?, creds.clone()).await?;
    let client = tls::client_config(None, Some(data.path()), false)?;
    let url = format!("wss://localhost:{}", addr.port());

    let dialer = Dialer::new(&url, creds.clone(), client.clone())?;
    let (_ws, protocol) = dialer.dial(PUSH_PATH).await?;
    assert_eq!(protocol, None);

    let reliable = Dialer::new(&url, creds, client.clone())?.with_subprotocol("wsmq.v1");
    let (_ws, protocol) = reliable.dial(PUSH_PATH).await?;
    assert_eq!(protocol.as_deref(), Some("wsmq.v1"));

    let unknown = Dialer::new(&url, credentials("svc", "wrong"), client.clone())?
        .with_subprotocol("other.v2");
    let err = unknown
        .dial(PUSH_PATH)
        .await
        .err()
        .ok_or("wrong password accepted")?;
    assert!(
        matches!(err, DialError::Unauthorized { ref user, .. } if user == "svc"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("wrong"), "{err}");
    Ok(())
}

#[tokio::test]
async fn dialer_reports_an_untrusted_certificate_as_a_verification_failure() -> TestResult {
    let server_data = tempfile::tempdir()?;
    let creds = credentials("svc", "pw");
    let addr = ws_server(
        tls::server_config(None, None, server_data.path())?,
        creds.clone(),
    )
    .await?;
    // Trusts a different development CA only.
    let client_data = tempfile::tempdir()?;
    let other_ca = tls::ensure_dev_pki(client_data.path())?.ca_cert;
    let client = tls::client_config(Some(&other_ca), None, false)?;
    let dialer = Dialer::new(&format!("wss://127.0.0.1:{}", addr.port()), creds, client)?;
    let err = dialer
        .dial(POP_PATH)
        .await
        .err()
        .ok_or("untrusted server accepted")?;
    assert!(matches!(err, DialError::TlsVerification { .. }), "{err:?}");
    Ok(())
}

// ---- authenticator ----

fn write_users_file(dir: &Path, contents: &str) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join("users.htpasswd");
    fs::write(&path, contents)?;
    Ok(path)
}

fn bcrypt_hashes(password: &str) -> Result<(String, String), bcrypt::BcryptError> {
    let y = bcrypt::hash_with_result(password, TEST_BCRYPT_COST)?
        .format_for_version(bcrypt::Version::TwoY);
    let b = bcrypt::hash(password, TEST_BCRYPT_COST)?;
    Ok((y, b))
}

#[tokio::test]
async fn htpasswd_file_with_bcrypt_and_plaintext_users_verifies_each() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (y_hash, b_hash) = bcrypt_hashes("alice-pw")?;
    assert!(y_hash.starts_with("$2y$") && b_hash.starts_with("$2b$"));
    let bob_hash = bcrypt::hash("bob-pw", TEST_BCRYPT_COST)?;
    let file = write_users_file(
        dir.path(),
        &format!(
            "# wsmq users\n\nalice:{y_hash}\n  # indented comment\nbob:{bob_hash}\ndev:plain:text\n"
        ),
    )?;
    let extra = Secret::new("carol:carol-pw");
    let auth = Authenticator::load(Some(&file), Some(&extra))?;
    assert_eq!(auth.user_count(), 4);
    assert_eq!(
        auth.verify(Some(&credentials("alice", "alice-pw")), PEER)
            .await,
        Ok("alice".to_owned())
    );
    assert_eq!(
        auth.verify(Some(&credentials("bob", "bob-pw")), PEER).await,
        Ok("bob".to_owned())
    );
    assert_eq!(
        auth.verify(Some(&credentials("dev", "plain:text")), PEER)
            .await,
        Ok("dev".to_owned())
    );
    assert_eq!(
        auth.verify(Some(&credentials("carol", "carol-pw")), PEER)
            .await,
        Ok("carol".to_owned())
    );

    let b_file = write_users_file(dir.path(), &format!("alice:{b_hash}\n"))?;
    let b_auth = Authenticator::load(Some(&b_file), None)?;
    assert_eq!(
        b_auth
            .verify(Some(&credentials("alice", "alice-pw")), PEER)
            .await,
        Ok("alice".to_owned())
    );
    Ok(())
}

#[test]
fn malformed_users_file_line_is_reported_by_number_without_its_secret() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cases = [
        ("ok:fine\n# comment\n\nno-colon-topsecret\n", 4),
        ("ok:fine\n:topsecret\n", 2),
        ("ok:fine\nmallory:$apr1$topsecret$abc\n", 2),
        ("ok:fine\nmallory:$2y$10$topsecret\n", 2),
        ("ok:fine\nok:topsecret\n", 2),
    ];
    for (contents, line) in cases {
        let file = write_users_file(dir.path(), contents)?;
        let err = Authenticator::load(Some(&file), None)
            .err()
            .ok_or_else(|| format!("accepted {contents:?}"))?;
        assert!(
            matches!(err, AuthError::Malformed { number, .. } | AuthError::DuplicateUser { number, .. } if number == line),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&format!("line {line}")), "{message}");
        assert!(message.contains("users.htpasswd"), "{message}");
        assert!(!message.contains("topsecret"), "{message}");
    }
    let missing = Authenticator::load(Some(&dir.path().join("absent")), None);
    assert!(
        matches!(missing, Err(AuthError::Read { .. })),
        "{missing:?}"
    );
    Ok(())
}

#[tokio::test]
async fn verify_distinguishes_missing_from_invalid_and_treats_unknown_users_as_invalid()
-> TestResult {
    let auth = Authenticator::from_users(&Secret::new("alice:right"))?;
    assert_eq!(
        auth.verify(Some(&credentials("alice", "right")), PEER)
            .await,
        Ok("alice".to_owned())
    );
    assert_eq!(
        auth.verify(Some(&credentials("alice", "wrong")), PEER)
            .await,
        Err(AuthFailure::Invalid)
    );
    assert_eq!(
        auth.verify(Some(&credentials("alice", "righ")), PEER).await,
        Err(AuthFailure::Invalid)
    );
    assert_eq!(
        auth.verify(Some(&credentials("alice", "")), PEER).await,
        Err(AuthFailure::Invalid)
    );
    assert_eq!(
        auth.verify(Some(&credentials("mallory", "right")), PEER)
            .await,
        Err(AuthFailure::Invalid)
    );
    assert_eq!(auth.verify(None, PEER).await, Err(AuthFailure::Missing));
    Ok(())
}

#[tokio::test]
async fn successful_bcrypt_checks_are_cached_and_failures_are_not() -> TestResult {
    let hash = bcrypt::hash("pw", TEST_BCRYPT_COST)?;
    let dir = tempfile::tempdir()?;
    let auth = Authenticator::load(
        Some(&write_users_file(dir.path(), &format!("svc:{hash}\n"))?),
        None,
    )?;
    let good = credentials("svc", "pw");

    assert_eq!(auth.verify(Some(&good), PEER).await, Ok("svc".to_owned()));
    assert_eq!(auth.bcrypt_verifications(), 1);
    for _ in 0..5 {
        // Spawned, as listeners do: the future must be Send and must not borrow the authenticator.
        let (auth, good) = (auth.clone(), good.clone());
        let verified = tokio::spawn(async move { auth.verify(Some(&good), PEER).await }).await?;
        assert_eq!(verified, Ok("svc".to_owned()));
    }
    assert_eq!(
        auth.bcrypt_verifications(),
        1,
        "cached success must not run bcrypt again"
    );

    let other_peer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for expected in 2..=3 {
        let wrong = auth
            .verify(Some(&credentials("svc", "nope")), other_peer)
            .await;
        assert_eq!(wrong, Err(AuthFailure::Invalid));
        assert_eq!(
            auth.bcrypt_verifications(),
            expected,
            "failures are never cached"
        );
    }
    let unknown = auth
        .verify(Some(&credentials("ghost", "pw")), other_peer)
        .await;
    assert_eq!(unknown, Err(AuthFailure::Invalid));
    assert_eq!(
        auth.bcrypt_verifications(),
        4,
        "an unknown user costs a bcrypt like a known one"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_from_one_address_are_throttled_then_slowed_down() -> TestResult {
    let auth = Authenticator::from_users(&Secret::new("alice:right"))?;
    let wrong = credentials("alice", "wrong");
    let right = credentials("alice", "right");
    let attacker = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(
            auth.verify(Some(&wrong), attacker).await,
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the first failures are free"
        );
    }
    let start = Instant::now();
    assert_eq!(
        auth.verify(Some(&wrong), attacker).await,
        Err(AuthFailure::Throttled {
            retry_after: FAILURE_INTERVAL
        }),
        "the sixth attempt is refused unchecked"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        auth.verify(Some(&right), attacker).await,
        Err(AuthFailure::Throttled {
            retry_after: FAILURE_INTERVAL
        }),
        "while throttled nothing is checked, not even a right password"
    );

    let start = Instant::now();
    auth.verify(Some(&wrong), PEER)
        .await
        .err()
        .ok_or("wrong password accepted")?;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "another address is neither throttled nor slowed down"
    );

    tokio::time::advance(FAILURE_INTERVAL).await;
    let start = Instant::now();
    assert_eq!(
        auth.verify(Some(&wrong), attacker).await,
        Err(AuthFailure::Invalid)
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(250),
        "one more check per interval, answered slowly"
    );
    tokio::time::advance(FAILURE_INTERVAL).await;
    let start = Instant::now();
    assert_eq!(
        auth.verify(Some(&right), attacker).await,
        Ok("alice".to_owned())
    );
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "a correct password is answered at once"
    );

    tokio::time::advance(Duration::from_secs(61)).await;
    let start = Instant::now();
    auth.verify(Some(&wrong), attacker)
        .await
        .err()
        .ok_or("wrong password accepted")?;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "a quiet minute resets the count"
    );
    Ok(())
}
