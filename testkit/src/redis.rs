//! A real `redis-server` for the tests of the Redis backend: its own port on loopback and its own directory,
//! durable as production should run it (`appendonly yes`, `appendfsync always`), killed when dropped. It can be
//! killed and started again on the same port and data, to test what survives a Redis restart.
//!
//! `scripts/test` installs the Debian package `redis-server` when it is missing; a test that cannot find the
//! program fails with that hint rather than skipping.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::wait::within;

/// A running `redis-server`; stopped (SIGKILL) when dropped, its directory removed.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    password: Option<String>,
    /// A directory with `ca.pem`, `server.pem` and `server-key.pem` (the development PKI): serve TLS only.
    tls: Option<PathBuf>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a fresh server on a free loopback port and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None, None).await
    }

    /// Like [`RedisServer::start`], requiring `password` from clients (`requirepass`).
    pub async fn with_password(password: &str) -> anyhow::Result<Self> {
        Self::start_with(Some(password.to_owned()), None).await
    }

    /// Like [`RedisServer::start`], speaking TLS only, with the certificate in `pki` (a development PKI
    /// directory, e.g. `<data-dir>/tls` after `wsmq_core::tls::ensure_dev_pki`); reach it at `rediss://localhost`.
    pub async fn with_tls(pki: &std::path::Path) -> anyhow::Result<Self> {
        Self::start_with(None, Some(pki.to_path_buf())).await
    }

    async fn start_with(password: Option<String>, tls: Option<PathBuf>) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("wsmq-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut server = Self {
            port,
            dir,
            password,
            tls,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`, with the password if the server requires one.
    pub fn url(&self) -> String {
        match (&self.password, &self.tls) {
            (_, Some(_)) => format!("rediss://localhost:{}", self.port),
            (Some(password), None) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            (None, None) => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server at once (SIGKILL: no shutdown save, as in a crash) and waits for it to exit.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing redis-server")?;
        }
        Ok(())
    }

    /// Starts the server (again) on the same port and directory, so it reloads its append-only file, and waits
    /// until it accepts connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.arg("--requirepass").arg(password);
        }
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => command.arg("--port").arg(self.port.to_string()),
            Some(pki) => command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(pki.join("server.pem"))
                .arg("--tls-key-file")
                .arg(pki.join("server-key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(pki.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]),
        };
        let mut child = command
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "starting redis-server (Debian package redis-server; scripts/test installs it)",
            )?;
        let stdout = child.stdout.take().context("redis-server stdout")?;
        self.child = Some(child);
        let mut lines = BufReader::new(stdout).lines();
        let ready = within("redis-server to accept connections", async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("Ready to accept connections") {
                    return Ok(true);
                }
            }
            Ok::<_, std::io::Error>(false)
        })
        .await??;
        if !ready {
            bail!(
                "redis-server on port {} exited before accepting connections",
                self.port
            );
        }
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
