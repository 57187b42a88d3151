//! The server side of TLS over a TCP socket, built on rustls's unbuffered API so that an idle connection holds
//! no I/O buffers.
//!
//! `tokio_rustls::server::TlsStream` wraps rustls's buffered `ServerConnection`, whose record deframer keeps a
//! 4 KiB read buffer for the connection's whole life, and whose plaintext and TLS output queues keep their
//! allocations too. With tens of thousands of mostly idle subscribers that buffer alone was a third of a
//! connection's memory (docs/PERFORMANCE.md, "Idle connection memory"). Here the stream owns its buffers and
//! keeps each one only while it holds bytes:
//!
//! - received ciphertext is read in chunks of [`READ_SIZE`] into a buffer allocated only once the socket is
//!   readable; what remains after every complete record has been decrypted (the start of a record still in
//!   flight) is kept, and the buffer is freed once it is empty;
//! - decrypted plaintext goes straight into the caller's buffer; only what does not fit is kept until the next
//!   read;
//! - encrypted output is kept until it has been written to the socket, and freed by the flush that empties it.
//!
//! Behaviour matches tokio-rustls: TLS 1.2 and 1.3 with whatever the `rustls::ServerConfig` allows, TLS
//! post-handshake messages (session tickets, key updates) are answered, `close_notify` from the peer is a clean
//! end of stream, EOF without it is an `UnexpectedEof` error, `poll_shutdown` sends `close_notify` before
//! shutting down the socket, and writes are accepted while at most [`OUTGOING_LIMIT`] bytes wait for the socket
//! (backpressure beyond that). Fatal TLS errors are answered with rustls's alert when the socket takes it at once.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, BytesMut};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes asked of the socket per read: one full-size TLS record's worth, so a busy connection decrypts whole
/// records straight from one read.
const READ_SIZE: usize = 16 * 1024;
/// Encrypted bytes that may wait for the socket before `poll_write` stops taking more (rustls's own default
/// buffer limit).
const OUTGOING_LIMIT: usize = 64 * 1024;
/// Largest plaintext of one TLS record.
const MAX_FRAGMENT: usize = 16 * 1024;
/// Room reserved for one `close_notify` alert or a handshake record before rustls says how much it needs.
const SMALL_RECORD: usize = 64;

/// A server-side TLS connection over TCP with its handshake completed; see the module documentation.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not yet processed: the start of an incomplete record. Unallocated when empty.
    incoming: BytesMut,
    /// Decrypted application data the caller's buffer had no room for. Unallocated when empty.
    plaintext: BytesMut,
    /// Encrypted bytes (records, alerts, handshake messages) not yet written; `outgoing[..sent]` is written.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer sent `close_notify`: everything after the plaintext still kept is end of stream.
    peer_closed: bool,
    /// Our `close_notify` is queued or sent: nothing more may be written.
    close_sent: bool,
    /// The socket reached EOF.
    eof: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer_closed", &self.peer_closed)
            .field("incoming", &self.incoming.len())
            .field("plaintext", &self.plaintext.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .finish_non_exhaustive()
    }
}

/// What the caller of [`TlsStream::process`] wants done once rustls allows writing.
#[derive(Clone, Copy)]
enum Action<'a> {
    /// Nothing: only process what was received.
    None,
    /// Encrypt this application data.
    Encrypt(&'a [u8]),
    /// Encrypt a `close_notify` alert.
    CloseNotify,
}

/// What one step of the rustls state machine asks for next.
enum Step {
    /// Call `process_tls_records` again.
    Continue,
    /// Nothing more to do with the bytes at hand: read more from the peer (or write, once the handshake is done).
    Idle,
    /// The action was done; for `Encrypt`, this many bytes of the data were taken.
    Done(usize),
}

/// Runs the TLS handshake on `tcp` as the server described by `config` and returns the established stream.
///
/// Fails with the rustls error (as `InvalidData`) when the handshake is refused, e.g. no common protocol
/// version or a bad client message, and with `UnexpectedEof` when the peer disconnects first. Has no timeout of
/// its own: the listener runs it under its handshake timeout.
pub async fn accept(config: Arc<rustls::ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: BytesMut::new(),
        plaintext: BytesMut::new(),
        outgoing: Vec::new(),
        sent: 0,
        peer_closed: false,
        close_sent: false,
        eof: false,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl TlsStream {
    /// The TLS protocol version negotiated in the handshake.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Bytes allocated for the stream's own buffers (received ciphertext, kept plaintext, pending output): zero
    /// while the connection is idle.
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.process(None, Action::None)?;
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                self.release_outgoing();
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_receive(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                )));
            }
        }
    }

    /// Drives rustls over the received bytes until it needs more of them: decrypted data goes to `out` (the
    /// rest to `self.plaintext`), handshake and alert records to `self.outgoing`. Then does `action` once
    /// rustls allows writing and returns `Some` (for `Encrypt`, how many bytes of the data were taken); `None`
    /// when the action could not be done yet (handshake in progress) or there was none.
    fn process(
        &mut self,
        mut out: Option<&mut ReadBuf<'_>>,
        action: Action<'_>,
    ) -> io::Result<Option<usize>> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let step = match state {
                Err(err) => {
                    self.incoming.advance(discard);
                    self.send_alert();
                    return Err(tls_error(err));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Some(out) = out.as_deref_mut() {
                            let n = payload.len().min(out.remaining());
                            out.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        self.plaintext.extend_from_slice(payload);
                    }
                    Step::Continue
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let start = self.outgoing.len();
                    let mut room = SMALL_RECORD;
                    loop {
                        self.outgoing.resize(start + room, 0);
                        match encode.encode(&mut self.outgoing[start..]) {
                            Ok(written) => {
                                self.outgoing.truncate(start + written);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(need)) => {
                                room = need.required_size.max(room + 1)
                            }
                            Err(err @ EncodeError::AlreadyEncoded) => {
                                self.outgoing.truncate(start);
                                return Err(io::Error::other(err));
                            }
                        }
                    }
                    Step::Continue
                }
                // The encoded records sit in `outgoing` ahead of anything written later, so they count as
                // transmitted: every path that waits on the peer flushes `outgoing` first.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Step::Continue
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Step::Continue
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    match action {
                        Action::Encrypt(_) => {
                            self.incoming.advance(discard);
                            return Err(closed_for_writing());
                        }
                        Action::CloseNotify => Step::Done(0),
                        Action::None => Step::Idle,
                    }
                }
                Ok(ConnectionState::WriteTraffic(_)) if matches!(action, Action::None) => {
                    Step::Idle
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let start = self.outgoing.len();
                    let mut room = match action {
                        // Per record: header, tag and (TLS 1.2) explicit nonce or (1.3) content type.
                        Action::Encrypt(data) => data.len() + (data.len() / MAX_FRAGMENT + 1) * 64,
                        Action::None | Action::CloseNotify => SMALL_RECORD,
                    };
                    loop {
                        self.outgoing.resize(start + room, 0);
                        let target = &mut self.outgoing[start..];
                        let result = match action {
                            Action::Encrypt(data) => traffic.encrypt(data, target),
                            Action::None | Action::CloseNotify => {
                                traffic.queue_close_notify(target)
                            }
                        };
                        match result {
                            Ok(written) => {
                                self.outgoing.truncate(start + written);
                                break;
                            }
                            Err(EncryptError::InsufficientSize(need)) => {
                                room = need.required_size.max(room + 1)
                            }
                            Err(err) => {
                                self.outgoing.truncate(start);
                                self.incoming.advance(discard);
                                return Err(io::Error::other(err));
                            }
                        }
                    }
                    match action {
                        Action::Encrypt(data) => Step::Done(data.len()),
                        Action::None | Action::CloseNotify => {
                            self.close_sent = true;
                            Step::Done(0)
                        }
                    }
                }
                Ok(ConnectionState::BlockedHandshake) => Step::Idle,
                Ok(other) => {
                    let what = format!("unexpected TLS state {other:?}");
                    drop(other);
                    self.incoming.advance(discard);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, what));
                }
            };
            self.incoming.advance(discard);
            match step {
                Step::Continue => {}
                Step::Idle => break,
                Step::Done(n) => {
                    self.release_incoming();
                    return Ok(Some(n));
                }
            }
        }
        self.release_incoming();
        Ok(None)
    }

    /// After a fatal error rustls has queued an alert for the peer: encode it and hand it to the socket if that
    /// takes it at once (the connection is being dropped; nothing waits for this).
    fn send_alert(&mut self) {
        // Only while rustls has output queued: its state machine then hands that out before it looks at the
        // received bytes again (which would fail once more). The bound guards against one that keeps asking.
        for _ in 0..4 {
            if !self.conn.wants_write() {
                break;
            }
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let queued = match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let start = self.outgoing.len();
                    self.outgoing.resize(start + 2 * SMALL_RECORD, 0);
                    let written = encode.encode(&mut self.outgoing[start..]).unwrap_or(0);
                    self.outgoing.truncate(start + written);
                    written > 0
                }
                _ => false,
            };
            self.incoming.advance(discard);
            if !queued {
                break;
            }
        }
        self.try_send();
    }

    /// Frees the received-ciphertext buffer once nothing is left in it (an idle connection keeps none).
    fn release_incoming(&mut self) {
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            self.incoming = BytesMut::new();
        }
    }

    /// Reads more ciphertext from the socket; `Ok(0)` is EOF. The buffer is allocated only once the socket is
    /// readable, so waiting for the peer costs no memory.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            self.incoming.reserve(READ_SIZE);
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(0) => {
                    self.eof = true;
                    return Poll::Ready(Ok(0));
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                // A stale readiness event: tokio has cleared it, so the next poll waits for a fresh one.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.release_incoming(),
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Writes all pending output to the socket. The buffer's allocation is kept for the next write; a flush
    /// frees it ([`TlsStream::release_outgoing`]).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Frees the output buffer once everything in it has been written (an idle connection keeps none).
    fn release_outgoing(&mut self) {
        if self.sent == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
    }

    /// Writes what the socket takes right now without registering for wake-ups: used on the read side, whose
    /// waker must not replace the one of a task waiting to write.
    fn try_send(&mut self) {
        while self.sent < self.outgoing.len() {
            match self.tcp.try_write(&self.outgoing[self.sent..]) {
                Ok(n) if n > 0 => self.sent += n,
                _ => return,
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
    }

    /// Copies kept plaintext into `buf`, freeing the buffer once it is empty.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.plaintext.len().min(buf.remaining());
        buf.put_slice(&self.plaintext[..n]);
        self.plaintext.advance(n);
        if self.plaintext.is_empty() {
            self.plaintext = BytesMut::new();
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.plaintext.is_empty() {
            this.take_plaintext(buf);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                let what = if this.incoming.is_empty() {
                    "peer closed the connection without sending TLS close_notify"
                } else {
                    "peer closed the connection in the middle of a TLS record"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, what)));
            }
            ready!(this.poll_receive(cx))?;
            if this.eof {
                continue;
            }
            this.process(Some(buf), Action::None)?;
            // Replies rustls owes the peer (a key update, an alert) go out with the data read.
            this.try_send();
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(closed_for_writing()));
        }
        if this.outgoing.len() - this.sent >= OUTGOING_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        let take = data.len().min(OUTGOING_LIMIT);
        let Some(n) = this.process(None, Action::Encrypt(&data[..take]))? else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS handshake not complete",
            )));
        };
        // Start sending at once; what the socket does not take now waits for the next write or flush.
        if let Poll::Ready(Err(err)) = this.poll_send(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        this.release_outgoing();
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.process(None, Action::CloseNotify)?;
            this.close_sent = true;
        }
        ready!(this.poll_send(cx))?;
        this.release_outgoing();
        match ready!(Pin::new(&mut this.tcp).poll_shutdown(cx)) {
            Err(err) if err.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(err)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

fn closed_for_writing() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "TLS connection closed for writing",
    )
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::time::Duration;

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream as ClientStream;

    use super::*;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    type TestResult = Result<(), BoxError>;

    /// Bound on every step that waits for the peer.
    const STEP: Duration = Duration::from_secs(10);

    /// A connected pair: the stream under test and a tokio-rustls client limited to `version`.
    async fn pair(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<(TlsStream, ClientStream<TcpStream>), BoxError> {
        let dir = tempfile::tempdir()?;
        let server_config = crate::tls::server_config(None, None, dir.path())?;
        let (server, client) = handshake(server_config, dir.path(), version).await?;
        Ok((server?, client?))
    }

    /// Runs `accept(server_config)` against a tokio-rustls client limited to `version` that trusts the development
    /// CA in `dir`, and returns both sides' outcomes, so a test can look at a refused handshake as well.
    async fn handshake(
        server_config: Arc<rustls::ServerConfig>,
        dir: &std::path::Path,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<
        (
            io::Result<TlsStream>,
            Result<ClientStream<TcpStream>, BoxError>,
        ),
        BoxError,
    > {
        let pki = crate::tls::ensure_dev_pki(dir)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&pki.ca_cert)?)?;
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let client = async {
            let tcp = TcpStream::connect(addr).await?;
            tokio_rustls::TlsConnector::from(Arc::new(client_config))
                .connect(ServerName::try_from("localhost")?, tcp)
                .await
                .map_err(BoxError::from)
        };
        let server = async {
            let (tcp, _) = listener.accept().await?;
            accept(server_config, tcp).await
        };
        Ok(tokio::time::timeout(STEP, async { tokio::join!(server, client) }).await?)
    }

    /// Writes `data` through `server` and reads it back from `client`, then the other way round.
    async fn round_trip(
        server: &mut TlsStream,
        client: &mut ClientStream<TcpStream>,
        data: &[u8],
    ) -> TestResult {
        assert!(
            transfer(server, client, data).await? == data,
            "server to client: data differs"
        );
        assert!(
            transfer(client, server, data).await? == data,
            "client to server: data differs"
        );
        Ok(())
    }

    /// Writes and flushes `data` on `from` while reading as many bytes on `to`; returns what `to` read.
    async fn transfer(
        from: &mut (impl AsyncWrite + Unpin),
        to: &mut (impl AsyncRead + Unpin),
        data: &[u8],
    ) -> io::Result<Vec<u8>> {
        let mut got = vec![0; data.len()];
        let (written, read) = tokio::join!(
            async {
                from.write_all(data).await?;
                from.flush().await
            },
            to.read_exact(&mut got),
        );
        written?;
        read?;
        Ok(got)
    }

    /// Encrypts `data` with the client's session without sending it, so a test can deliver the records in pieces.
    fn client_records(client: &mut ClientStream<TcpStream>, data: &[u8]) -> io::Result<Vec<u8>> {
        let (_, conn) = client.get_mut();
        conn.writer().write_all(data)?;
        let mut records = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut records)?;
        }
        Ok(records)
    }

    /// Polls `server`'s read until it holds at least `min` bytes of an incomplete record (or fails after `STEP`).
    async fn until_partial_record_held(server: &mut TlsStream, min: usize) -> TestResult {
        let deadline = tokio::time::Instant::now() + STEP;
        let mut buf = [0; 1];
        while server.incoming.len() < min {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server never read the partial record"
            );
            let read = tokio::time::timeout(Duration::from_millis(20), server.read(&mut buf)).await;
            assert!(
                read.is_err(),
                "a read returned before the record was complete: {read:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_round_trip_over_tls12_or_tls13_leaves_no_buffers_allocated() -> TestResult {
        for (version, wire) in [
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        ] {
            let (mut server, mut client) = pair(version).await?;
            assert_eq!(server.protocol_version(), Some(wire));
            round_trip(&mut server, &mut client, b"hello over TLS").await?;
            assert_eq!(server.buffered_capacity(), 0, "{wire:?}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_read_waiting_for_the_peer_holds_no_buffer() -> TestResult {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await?;
        round_trip(&mut server, &mut client, b"then silence").await?;
        let mut buf = [0; 64];
        let polled = poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut server).poll_read(cx, &mut buf).is_pending())
        })
        .await;
        assert!(polled, "a read with nothing sent did not wait");
        assert_eq!(server.buffered_capacity(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn messages_larger_than_a_record_and_the_output_limit_arrive_whole() -> TestResult {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut server, mut client) = pair(version).await?;
            let data: Vec<u8> = (0..3 * OUTGOING_LIMIT + 12_345)
                .map(|i| (i % 251) as u8)
                .collect();
            round_trip(&mut server, &mut client, &data).await?;
            assert_eq!(server.buffered_capacity(), 0);
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_record_split_across_reads_is_kept_until_complete_then_released() -> TestResult {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await?;
        let records = client_records(&mut client, b"split across two reads")?;
        let (first, rest) = records.split_at(records.len() / 2);
        client.get_mut().0.write_all(first).await?;
        until_partial_record_held(&mut server, first.len()).await?;
        assert!(server.buffered_capacity() >= first.len());
        client.get_mut().0.write_all(rest).await?;
        let mut got = vec![0; b"split across two reads".len()];
        tokio::time::timeout(STEP, server.read_exact(&mut got)).await??;
        assert_eq!(got, b"split across two reads");
        assert_eq!(server.buffered_capacity(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn plaintext_beyond_the_callers_buffer_is_kept_for_the_next_read() -> TestResult {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await?;
        client.write_all(b"0123456789").await?;
        client.flush().await?;
        let mut first = [0; 4];
        tokio::time::timeout(STEP, server.read_exact(&mut first)).await??;
        assert_eq!(&first, b"0123");
        assert!(
            server.buffered_capacity() > 0,
            "the rest of the record was dropped"
        );
        let mut rest = [0; 6];
        tokio::time::timeout(STEP, server.read_exact(&mut rest)).await??;
        assert_eq!(&rest, b"456789");
        assert_eq!(server.buffered_capacity(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn close_notify_from_the_peer_is_a_clean_end_of_stream_and_ours_reaches_it() -> TestResult
    {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await?;
        client.write_all(b"last words").await?;
        client.shutdown().await?;
        let mut got = Vec::new();
        tokio::time::timeout(STEP, server.read_to_end(&mut got)).await??;
        assert_eq!(got, b"last words");
        server.write_all(b"goodbye").await?;
        server.shutdown().await?;
        let mut got = Vec::new();
        // tokio-rustls reports EOF without our close_notify as an error, so this checks that it was sent.
        tokio::time::timeout(STEP, client.read_to_end(&mut got)).await??;
        assert_eq!(got, b"goodbye");
        Ok(())
    }

    #[tokio::test]
    async fn peer_eof_in_the_middle_of_a_record_is_an_unexpected_eof() -> TestResult {
        let (mut server, mut client) = pair(&rustls::version::TLS12).await?;
        let records = client_records(&mut client, b"never completed")?;
        let tcp = client.get_mut().0;
        tcp.write_all(&records[..records.len() - 3]).await?;
        tcp.shutdown().await?;
        let mut buf = [0; 64];
        let read = tokio::time::timeout(STEP, server.read(&mut buf)).await?;
        let err = read.err().ok_or("a truncated record was accepted")?;
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        Ok(())
    }

    #[tokio::test]
    async fn peer_eof_without_close_notify_is_an_unexpected_eof() -> TestResult {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await?;
        client.get_mut().0.shutdown().await?;
        let mut buf = [0; 64];
        let read = tokio::time::timeout(STEP, server.read(&mut buf)).await?;
        let err = read
            .err()
            .ok_or("EOF without close_notify was taken as a clean end")?;
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        Ok(())
    }

    #[tokio::test]
    async fn a_key_update_from_the_peer_is_followed() -> TestResult {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await?;
        round_trip(&mut server, &mut client, b"before").await?;
        client.get_mut().1.refresh_traffic_keys()?;
        round_trip(&mut server, &mut client, b"after the key update").await?;
        assert_eq!(server.buffered_capacity(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_refused_handshake_is_answered_with_an_alert() -> TestResult {
        let dir = tempfile::tempdir()?;
        let pki = crate::tls::ensure_dev_pki(dir.path())?;
        let tls13_only = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&pki.server_cert)?],
            rustls::pki_types::PrivateKeyDer::from_pem_file(&pki.server_key)?,
        )?;
        let (server, client) =
            handshake(Arc::new(tls13_only), dir.path(), &rustls::version::TLS12).await?;
        assert!(
            server.is_err(),
            "a TLS 1.2 client was accepted by a TLS 1.3 server"
        );
        let err = client
            .err()
            .ok_or("the client completed a refused handshake")?;
        // Without the alert the client would only see the connection close.
        let alert = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        assert!(
            matches!(
                alert,
                Some(rustls::Error::AlertReceived(
                    rustls::AlertDescription::ProtocolVersion
                ))
            ),
            "the client got no protocol_version alert: {err}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_fails_the_handshake() -> TestResult {
        let dir = tempfile::tempdir()?;
        let config = crate::tls::server_config(None, None, dir.path())?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let (accepted, _) = listener.accept().await?;
        let result = tokio::time::timeout(STEP, accept(config, accepted)).await?;
        let err = result.err().ok_or("plain HTTP was accepted as TLS")?;
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        Ok(())
    }
}
