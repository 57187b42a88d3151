//! The auth callout against a real HTTPS server on loopback (hyper, with the development PKI's rcgen
//! certificate), which counts requests and answers as each test tells it to.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use wsmq_core::Secret;
use wsmq_core::callout::{
    AuthCallout, CalloutConfig, CalloutError, CalloutRequest, Credential, MAX_REPLY_BYTES,
    Unavailable,
};
use wsmq_core::tls;
use wsmq_core::topic::{Pattern, Topic};

/// How the test server answers.
#[derive(Clone)]
enum Answer {
    Json(StatusCode, String),
    Never,
    /// Waits for a permit of the gate, then answers this JSON.
    Gated(Arc<Semaphore>, String),
}

struct AuthServer {
    url: String,
    ca: std::path::PathBuf,
    requests: Arc<AtomicUsize>,
    last_body: Arc<Mutex<Option<serde_json::Value>>>,
    _dir: tempfile::TempDir,
}

impl AuthServer {
    async fn start(answer: Answer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = tls::ensure_dev_pki(dir.path()).unwrap();
        let acceptor = TlsAcceptor::from(tls::server_config(None, None, dir.path()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let last_body = Arc::new(Mutex::new(None));
        let (counter, last) = (requests.clone(), last_body.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, answer, counter, last) = (
                    acceptor.clone(),
                    answer.clone(),
                    counter.clone(),
                    last.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (answer, counter, last) =
                            (answer.clone(), counter.clone(), last.clone());
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            *last.lock() = serde_json::from_slice(&body).ok();
                            counter.fetch_add(1, Ordering::SeqCst);
                            let (status, json) = match answer {
                                Answer::Json(status, json) => (status, json),
                                Answer::Never => std::future::pending().await,
                                Answer::Gated(gate, json) => {
                                    gate.acquire().await.unwrap().forget();
                                    (StatusCode::OK, json)
                                }
                            };
                            let mut response = Response::new(Full::new(Bytes::from(json)));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("https://{addr}/wsmq/auth"),
            ca: pki.ca_cert,
            requests,
            last_body,
            _dir: dir,
        }
    }

    async fn answering(json: &str) -> Self {
        Self::start(Answer::Json(StatusCode::OK, json.to_owned())).await
    }

    fn config(&self) -> CalloutConfig {
        CalloutConfig {
            ca: Some(self.ca.clone()),
            ..CalloutConfig::new(&self.url)
        }
    }

    fn client(&self) -> AuthCallout {
        AuthCallout::new(&self.config()).unwrap()
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn request<'a>(user: &'a str, secret: &'a Secret) -> CalloutRequest<'a> {
    CalloutRequest {
        user,
        credential: Credential::Password(secret),
        remote_addr: "127.0.0.1:40000".parse().unwrap(),
        origin: Some("https://app.example"),
        service: "subscriber",
    }
}

#[tokio::test]
async fn an_allowed_connection_sends_the_contract_and_gets_a_grant() {
    let server = AuthServer::answering(r#"{"allow":true}"#).await;
    let secret = Secret::new("s3cret");
    let grant = server
        .client()
        .authorize(&request("alice", &secret))
        .await
        .unwrap();
    assert_eq!(
        grant.permissions, None,
        "no permissions sent: the edge applies its ACL"
    );
    let body = server.last_body.lock().clone().unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "user": "alice", "password": "s3cret", "remote_addr": "127.0.0.1:40000",
            "origin": "https://app.example", "service": "subscriber"
        })
    );

    let token = Secret::new("tok");
    let bearer = CalloutRequest {
        credential: Credential::Token(&token),
        origin: None,
        ..request("alice", &secret)
    };
    server.client().authorize(&bearer).await.unwrap();
    let body = server.last_body.lock().clone().unwrap();
    assert_eq!(body["token"], "tok");
    assert_eq!(body["origin"], serde_json::Value::Null);
    assert!(body.get("password").is_none());
}

#[tokio::test]
async fn a_denial_carries_the_reason_and_is_not_cached() {
    let server = AuthServer::answering(
        r#"{"allow":false,"reason":"account\u0007 locked","cache_ttl_secs":60}"#,
    )
    .await;
    let client = server.client();
    let secret = Secret::new("pw");
    for expected_requests in 1..=2 {
        match client.authorize(&request("alice", &secret)).await {
            Err(CalloutError::Denied(Some(reason))) => {
                assert_eq!(reason, "account locked", "control characters are removed");
            }
            other => panic!("expected a denial, got {other:?}"),
        }
        assert_eq!(server.requests(), expected_requests);
    }
}

#[tokio::test]
async fn permissions_in_the_reply_are_resolved_for_the_user() {
    let server = AuthServer::answering(
        r#"{"allow":true,"permissions":{
            "publish":{"allow":["chat.{user}.>"],"deny":["chat.{user}.admin"]},
            "subscribe":{"allow":["@{user}","chat.>"]}}}"#,
    )
    .await;
    let secret = Secret::new("pw");
    let grant = server
        .client()
        .authorize(&request("bob", &secret))
        .await
        .unwrap();
    let permissions = grant.permissions.unwrap();
    let publish = |t: &str| permissions.can_publish(Topic::parse(t).unwrap());
    let subscribe = |p: &str| permissions.can_subscribe(&Pattern::parse(p).unwrap());
    assert!(publish("chat.bob.room") && !publish("chat.bob.admin") && !publish("chat.eve.room"));
    assert!(subscribe("@bob") && !subscribe("@eve") && subscribe("chat.*"));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_unavailable() {
    let server = AuthServer::start(Answer::Never).await;
    let client = AuthCallout::new(&CalloutConfig {
        timeout: Duration::from_millis(300),
        ..server.config()
    })
    .unwrap();
    let secret = Secret::new("pw");
    let started = std::time::Instant::now();
    let result = client.authorize(&request("alice", &secret)).await;
    assert!(
        matches!(
            result,
            Err(CalloutError::Unavailable(Unavailable::Timeout(_)))
        ),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout bounds the wait"
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let client = AuthCallout::new(&CalloutConfig {
        ca: Some(tls::ensure_dev_pki(dir.path()).unwrap().ca_cert),
        ..CalloutConfig::new(format!("https://{addr}/auth"))
    })
    .unwrap();
    let secret = Secret::new("pw");
    let result = client.authorize(&request("alice", &secret)).await;
    assert!(
        matches!(
            result,
            Err(CalloutError::Unavailable(Unavailable::Request(_)))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_server_with_an_untrusted_certificate_is_unavailable() {
    let server = AuthServer::answering(r#"{"allow":true}"#).await;
    let other = tempfile::tempdir().unwrap();
    let client = AuthCallout::new(&CalloutConfig {
        ca: Some(tls::ensure_dev_pki(other.path()).unwrap().ca_cert),
        ..server.config()
    })
    .unwrap();
    let secret = Secret::new("pw");
    let result = client.authorize(&request("alice", &secret)).await;
    assert!(
        matches!(
            result,
            Err(CalloutError::Unavailable(Unavailable::Request(_)))
        ),
        "{result:?}"
    );
    assert_eq!(
        server.requests(),
        0,
        "nothing was sent to a server that failed verification"
    );
}

#[tokio::test]
async fn positive_answers_are_cached_per_secret_for_their_ttl() {
    let server = AuthServer::answering(r#"{"allow":true,"cache_ttl_secs":1}"#).await;
    let client = server.client();
    let (right, other) = (Secret::new("pw"), Secret::new("other"));
    client.authorize(&request("alice", &right)).await.unwrap();
    client.authorize(&request("alice", &right)).await.unwrap();
    assert_eq!(
        server.requests(),
        1,
        "the second connection is answered from the cache"
    );
    client.authorize(&request("alice", &other)).await.unwrap();
    assert_eq!(server.requests(), 2, "another secret is asked about");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.authorize(&request("alice", &right)).await.unwrap();
    assert_eq!(server.requests(), 3, "an expired answer is asked again");
}

#[tokio::test]
async fn answers_without_a_ttl_are_not_cached() {
    let server = AuthServer::answering(r#"{"allow":true}"#).await;
    let client = server.client();
    let secret = Secret::new("pw");
    client.authorize(&request("alice", &secret)).await.unwrap();
    client.authorize(&request("alice", &secret)).await.unwrap();
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn callouts_beyond_the_concurrency_bound_fail_at_once() {
    let gate = Arc::new(Semaphore::new(0));
    let server = AuthServer::start(Answer::Gated(gate.clone(), r#"{"allow":true}"#.into())).await;
    let client = AuthCallout::new(&CalloutConfig {
        max_concurrent: 2,
        timeout: Duration::from_secs(30),
        ..server.config()
    })
    .unwrap();
    let secret = Arc::new(Secret::new("pw"));
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let (client, secret) = (client.clone(), secret.clone());
            tokio::spawn(async move { client.authorize(&request("alice", &secret)).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.requests() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two callouts never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = std::time::Instant::now();
    let third = client.authorize(&request("alice", &secret)).await;
    assert!(
        matches!(
            third,
            Err(CalloutError::Unavailable(Unavailable::Overloaded))
        ),
        "{third:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "it fails at once, without waiting"
    );

    gate.add_permits(3);
    for call in in_flight {
        call.await.unwrap().unwrap();
    }
    client
        .authorize(&request("alice", &secret))
        .await
        .expect("finished callouts give their slots back");
}

#[tokio::test]
async fn replies_outside_the_contract_are_unavailable() {
    let huge = format!(
        r#"{{"allow":true,"reason":"{}"}}"#,
        "x".repeat(MAX_REPLY_BYTES)
    );
    let cases = [
        (StatusCode::OK, huge.as_str(), "too large"),
        (StatusCode::OK, "not json", "bad"),
        (StatusCode::OK, r#"{"allow":"yes"}"#, "bad"),
        (StatusCode::OK, r#"{"reason":"no allow field"}"#, "bad"),
        (
            StatusCode::OK,
            r#"{"allow":true,"permissions":{"publish":{"allow":["a..b"]}}}"#,
            "bad",
        ),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"allow":true}"#,
            "status",
        ),
        (StatusCode::FORBIDDEN, r#"{"allow":false}"#, "status"),
    ];
    let secret = Secret::new("pw");
    for (status, body, kind) in cases {
        let server = AuthServer::start(Answer::Json(status, body.to_owned())).await;
        let result = server.client().authorize(&request("alice", &secret)).await;
        let ok = match (kind, &result) {
            ("too large", Err(CalloutError::Unavailable(Unavailable::ReplyTooLarge))) => true,
            ("bad", Err(CalloutError::Unavailable(Unavailable::BadReply(_)))) => true,
            ("status", Err(CalloutError::Unavailable(Unavailable::Status(s)))) => *s == status,
            _ => false,
        };
        assert!(ok, "{status} {:.60}: {result:?}", body);
    }
}

#[tokio::test]
async fn a_reply_may_name_the_user_whose_permissions_it_sends_and_a_bad_name_is_unavailable() {
    let server = AuthServer::answering(
        r#"{"allow":true,"user":"carol","permissions":{"subscribe":{"allow":["@{user}"]}}}"#,
    )
    .await;
    let token = Secret::new("tok");
    let bearer = CalloutRequest {
        credential: Credential::Token(&token),
        ..request("", &token)
    };
    let grant = server.client().authorize(&bearer).await.unwrap();
    assert_eq!(grant.user.as_deref(), Some("carol"));
    let permissions = grant.permissions.unwrap();
    assert!(permissions.can_subscribe(&Pattern::parse("@carol").unwrap()));
    assert!(!permissions.can_subscribe(&Pattern::parse("@alice").unwrap()));

    for bad in [r#""""#, r#""two words""#, r#""bell\u0007""#] {
        let server = AuthServer::answering(&format!(r#"{{"allow":true,"user":{bad}}}"#)).await;
        let outcome = server.client().authorize(&bearer).await;
        assert!(
            matches!(
                outcome,
                Err(CalloutError::Unavailable(Unavailable::BadUser))
            ),
            "{bad}: {outcome:?}"
        );
    }
}
