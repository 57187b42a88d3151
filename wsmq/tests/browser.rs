//! The browser page in a real headless Chromium: it subscribes, the test publishes, the message appears in the
//! page; wrong credentials show an error; after a reload it resumes its topics and shows what it missed. Needs Debian's `chromium` and `chromium-driver`, which `scripts/test`
//! (the README's test command) installs. It takes a screenshot, saved to `WSMQ_SCREENSHOT` when set (README's
//! `docs/browser.png` is made with `WSMQ_SCREENSHOT=$PWD/docs/browser.png scripts/test -p wsmq --test browser`).
//!
//! Chromium is driven through chromedriver's W3C WebDriver HTTP API with a dozen lines of raw HTTP, which keeps a
//! WebDriver client library (and its TLS stack) out of the build.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tungstenite::Message;
mod common;

use common::{ALL, client, config, start_all, start_stack};
use wsmq_core::protocol::PUBLISH_PATH;
use wsmq_testkit::expect_within;

/// A chromedriver child and one browser session.
struct Browser {
    _driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    async fn start(profile: &Path) -> Self {
        // chromedriver cannot bind port 0 itself: take a free port and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver is missing: run scripts/test, which installs chromium and chromium-driver");
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        expect_within("chromedriver start", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("started successfully") {
                    return;
                }
            }
            panic!("chromedriver exited");
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The page is served with the development certificate of a temp dir.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1100,900", format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let created = webdriver(addr, "POST", "/session", Some(caps)).await;
        let session = created["sessionId"]
            .as_str()
            .expect("session created")
            .to_owned();
        Self {
            _driver: driver,
            addr,
            session,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        webdriver(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
        .await
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// Reloads the page, as the user's reload button does (the tab's sessionStorage survives it).
    async fn reload(&self) {
        self.call("POST", "/refresh", Some(json!({}))).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {css}: {found}"))
            .to_owned()
    }

    async fn fill(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .await;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Subscribes the page to `topic` with its form.
    async fn subscribe(&self, topic: &str) {
        self.fill("#topic", topic).await;
        self.click("#subscribe").await;
    }

    /// Publishes `content` on `topic` with the page's form.
    async fn publish(&self, topic: &str, content: &str) {
        self.fill("#pub-topic", topic).await;
        self.fill("#pub-content", content).await;
        self.click("#publish").await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        self.call("GET", &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn attribute(&self, css: &str, name: &str) -> String {
        let id = self.element(css).await;
        self.call("GET", &format!("/element/{id}/attribute/{name}"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Polls the page (the browser updates it asynchronously) until `check` holds, bounded by `within`.
    async fn wait_until(&self, what: &str, css: &str, check: impl Fn(&str) -> bool) -> String {
        expect_within(what, async {
            loop {
                let text = self.text(css).await;
                if check(&text) {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    async fn screenshot(&self, path: &Path) {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": "window.scrollTo(0, 0)", "args": []})),
        )
        .await;
        let png = self.call("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        std::fs::write(path, bytes).unwrap();
    }
}

/// One WebDriver command over HTTP/1.1; returns the response's `value`.
async fn webdriver(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let stream = expect_within("webdriver connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    // chromedriver may keep the connection open: read the head, then exactly Content-Length bytes.
    let mut length = 0;
    expect_within("webdriver response", async {
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
    })
    .await;
    let mut json_body = vec![0; length];
    expect_within("webdriver body", stream.read_exact(&mut json_body))
        .await
        .unwrap();
    let value: Value = serde_json::from_slice(&json_body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json_body)));
    assert!(
        value["value"].get("error").is_none(),
        "{method} {path}: {value}"
    );
    value["value"].clone()
}

#[tokio::test]
async fn the_page_receives_published_messages_and_shows_bad_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (running, pub_port, sub_port) = start_all(dir.path()).await;

    let browser = Browser::start(&dir.path().join("chromium")).await;
    browser
        .goto(&format!("https://localhost:{sub_port}/"))
        .await;
    browser.fill("#user", "hello").await;
    browser.fill("#password", "test").await;
    browser
        .fill("#publisher-url", &format!("wss://localhost:{pub_port}"))
        .await;
    browser.click("#connect").await;
    expect_within("page connected", async {
        while browser.attribute("#status", "data-state").await != "connected" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    browser.subscribe("news").await;
    browser
        .wait_until("subscription shown", "#subscriptions", |t| {
            t.contains("news")
        })
        .await;

    // Publish from outside the browser, as an application would.
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    publisher
        .send(Message::text(
            r#"{"Topic":"news","Content":"hello from the test","Id":1}"#,
        ))
        .await
        .unwrap();
    let ack = expect_within("ack", publisher.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, Message::text(r#"{"ack":1}"#));
    browser
        .wait_until("message shown", "#messages", |t| {
            t.contains("[news] hello from the test")
        })
        .await;

    // And the page publishes itself (to the publisher, a different origin port, allowed by the stack).
    browser.publish("news", "typed in the page").await;
    browser
        .wait_until("own message shown", "#messages", |t| {
            t.contains("[news] typed in the page")
        })
        .await;
    let shot = std::env::var_os("WSMQ_SCREENSHOT")
        .map_or_else(|| dir.path().join("browser.png"), Into::into);
    browser.screenshot(&shot).await;

    // Wrong credentials: the WebSocket is refused (401) and the page says so.
    browser.click("#disconnect").await;
    browser.fill("#password", "wrong").await;
    browser.click("#connect").await;
    let status = browser
        .wait_until("error shown", "#status", |t| {
            t.contains("connection refused")
        })
        .await;
    assert!(status.contains("check user/password"), "{status}");
    assert_eq!(browser.attribute("#status", "data-state").await, "error");

    browser.call("DELETE", "", None).await;
    running.stop().await;
}

/// Connects the page of the subscriber on `sub_port` with `fill` (field, value) pairs and waits until both links
/// are up.
async fn connect_page(browser: &Browser, sub_port: u16, pub_port: u16, fill: &[(&str, &str)]) {
    browser
        .goto(&format!("https://localhost:{sub_port}/"))
        .await;
    connect_loaded_page(browser, pub_port, fill).await;
}

/// Connects the page already loaded, as [`connect_page`] does.
async fn connect_loaded_page(browser: &Browser, pub_port: u16, fill: &[(&str, &str)]) {
    for (css, value) in fill {
        browser.fill(css, value).await;
    }
    browser
        .fill("#publisher-url", &format!("wss://localhost:{pub_port}"))
        .await;
    browser.click("#connect").await;
    expect_within("page connected", async {
        while browser.attribute("#status", "data-state").await != "connected" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_page_shows_a_denied_topic_and_receives_by_wildcard_what_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[users.hello]\npublish.allow = [\"news.>\"]\nsubscribe.allow = [\"news.>\"]\n",
    )
    .unwrap();
    let mut config = config(dir.path(), ALL);
    config.access.acl_file = Some(acl);
    let (running, pub_port, sub_port) = start_stack(wsmq::bind(config).await.unwrap());

    let browser = Browser::start(&dir.path().join("chromium")).await;
    connect_page(
        &browser,
        sub_port,
        pub_port,
        &[("#user", "hello"), ("#password", "test")],
    )
    .await;
    browser.subscribe("secret").await;
    browser
        .wait_until("denied subscription shown", "#messages", |t| {
            t.contains("not allowed to subscribe to secret")
        })
        .await;
    browser.publish("secret", "nope").await;
    browser
        .wait_until("denied publish shown", "#messages", |t| {
            t.contains("not allowed to publish to secret")
        })
        .await;

    browser.subscribe("news.*").await;
    browser
        .wait_until("wildcard subscription shown", "#subscriptions", |t| {
            t.contains("news.*")
        })
        .await;
    browser.publish("news.today", "by wildcard").await;
    browser
        .wait_until("message shown", "#messages", |t| {
            t.contains("[news.today] by wildcard")
        })
        .await;
    assert!(!browser.text("#subscriptions").await.contains("secret"));

    browser.call("DELETE", "", None).await;
    running.stop().await;
}

#[tokio::test]
async fn the_page_connects_with_a_bearer_token_checked_by_the_auth_callout() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = wsmq_testkit::auth_server::AuthServer::start(dir.path(), |request| {
        if request["token"] == "page-token" {
            let reply = r#"{"allow":true,"user":"carol","permissions":{
                "publish":{"allow":["@*"]},"subscribe":{"allow":["@{user}"]}}}"#;
            (200, reply.to_owned())
        } else {
            (200, r#"{"allow":false}"#.to_owned())
        }
    })
    .await
    .unwrap();
    let mut config = config(dir.path(), ALL);
    config.access.auth_url = Some(endpoint.url.clone());
    config.access.auth_ca = Some(endpoint.ca.clone());
    let (running, pub_port, sub_port) = start_stack(wsmq::bind(config).await.unwrap());

    let browser = Browser::start(&dir.path().join("chromium")).await;
    connect_page(&browser, sub_port, pub_port, &[("#token", "page-token")]).await;
    browser.subscribe("@carol").await;
    browser
        .wait_until("own inbox subscribed", "#subscriptions", |t| {
            t.contains("@carol")
        })
        .await;
    browser.publish("@carol", "note to self").await;
    browser
        .wait_until("message shown", "#messages", |t| {
            t.contains("[@carol] note to self")
        })
        .await;
    let requests = endpoint.requests.lock().clone();
    assert!(
        requests.iter().any(|r| r["service"] == "subscriber")
            && requests.iter().any(|r| r["service"] == "publisher"),
        "{requests:?}"
    );

    browser.call("DELETE", "", None).await;
    running.stop().await;
}

/// Publishes `content` to `topic` as a wsmq.v1 client and waits for the ack (stored, with its offset).
async fn publish_acked(
    publisher: &mut wsmq_core::dial::ClientWs,
    topic: &str,
    content: &str,
    id: u64,
) {
    let frame = json!({ "Topic": topic, "Content": content, "Id": id }).to_string();
    publisher.send(Message::text(frame)).await.unwrap();
    let ack = expect_within("ack", publisher.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, Message::text(format!(r#"{{"ack":{id}}}"#)));
}

#[tokio::test]
async fn the_page_recovers_after_a_reload_what_was_published_meanwhile_once() {
    let dir = tempfile::tempdir().unwrap();
    let (running, pub_port, sub_port) = start_all(dir.path()).await;
    let credentials = [("#user", "hello"), ("#password", "test")];

    let browser = Browser::start(&dir.path().join("chromium")).await;
    connect_page(&browser, sub_port, pub_port, &credentials).await;
    browser.subscribe("news").await;
    browser
        .wait_until("subscription shown", "#subscriptions", |t| {
            t.contains("news")
        })
        .await;
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    publish_acked(&mut publisher, "news", "before the reload", 1).await;
    browser
        .wait_until("message shown with its offset", "#messages", |t| {
            t.contains("#1 [news] before the reload")
        })
        .await;

    // The page goes away (its WebSockets close) and comes back without credentials; meanwhile two messages are
    // published.
    browser.reload().await;
    browser
        .wait_until("subscriptions kept", "#messages", |t| {
            t.contains("kept from before the reload: news")
        })
        .await;
    publish_acked(&mut publisher, "news", "while away 1", 2).await;
    publish_acked(&mut publisher, "news", "while away 2", 3).await;
    connect_loaded_page(&browser, pub_port, &credentials).await;
    let shown = browser
        .wait_until("missed messages recovered", "#messages", |t| {
            t.contains("resumed news after offset 1: recovered 2 missed message(s)")
                && t.contains("#3 [news] while away 2")
        })
        .await;
    assert!(shown.contains("#2 [news] while away 1"), "{shown}");
    publish_acked(&mut publisher, "news", "live again", 4).await;
    let shown = browser
        .wait_until("live message shown", "#messages", |t| {
            t.contains("#4 [news] live again")
        })
        .await;
    for (line, times) in [
        ("[news] before the reload", 0),
        ("[news] while away 1", 1),
        ("[news] while away 2", 1),
        ("[news] live again", 1),
    ] {
        assert_eq!(shown.matches(line).count(), times, "{line:?} in {shown}");
    }

    browser.call("DELETE", "", None).await;
    running.stop().await;
}
