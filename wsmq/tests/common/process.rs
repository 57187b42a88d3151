//! Service processes started from their binaries, as an operator runs them: each on its own loopback ports, ready
//! once its `/readyz` says so, killed (SIGKILL) on demand or when dropped.
//!
//! The binaries come from the directory the `wsmq` binary was built into: `cargo test --workspace` builds them;
//! after changing a service, run `cargo build --bins` before `cargo test -p wsmq`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use wsmq_testkit::expect_within;

/// How often readiness is polled while a service starts.
const POLL: Duration = Duration::from_millis(50);

pub fn bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_wsmq"))
        .parent()
        .unwrap()
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` first",
        path.display()
    );
    path
}

/// `N` distinct free loopback ports (bound together, then released for the services to take).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// Whether `GET /readyz` on the admin port answers 200.
pub async fn is_ready(admin: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", admin)).await else {
        return false;
    };
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.is_ok() && head.ends_with(b" 200")
}

/// One service process, killed when dropped.
pub struct Process {
    child: Child,
}

impl Process {
    /// Starts `name` with `args` and the shared data dir and users, and waits until its `/readyz` says ready.
    pub async fn start(name: &str, data_dir: &Path, admin: u16, args: &[String]) -> Self {
        let child = Command::new(bin(name))
            .args(args)
            .arg(format!("--admin-listen=127.0.0.1:{admin}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env("WSMQ_USERS", "hello:test")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        expect_within(&format!("{name} ready"), async {
            while !is_ready(admin).await {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        Self { child }
    }

    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}
