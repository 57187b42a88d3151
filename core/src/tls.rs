//! TLS for every wsmq listener and service link (rustls with the `ring` provider, TLS 1.2 and 1.3).
//!
//! Servers load a PEM certificate chain and key, or, when none is configured, a development PKI that is created
//! once in `<data-dir>/tls/`: a local CA (name-constrained to localhost, so trusting it cannot vouch for anything
//! else) and a server certificate for `localhost`, `127.0.0.1` and `::1`, renewed from the kept CA key when it
//! nears expiry. Clients verify servers against `--ca`, or the system roots plus that dev CA when it exists, so
//! services started from the same directory trust each other with no flags. Skipping verification is possible
//! only when asked for explicitly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ServerSessionMemoryCache;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Protocol versions offered and accepted: TLS 1.3, and 1.2 for older clients (ws-go's Go services).
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
/// The only application protocol spoken over TLS: WebSockets upgrade from HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Server-side TLS 1.2 sessions kept for resumption, so connect storms mostly skip full handshakes.
const SESSION_CACHE_CAPACITY: usize = 4096;
/// Development server certificates are valid for this long (the maximum browsers accept).
const DEV_CERT_VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);
/// Development CA validity.
const DEV_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A development server certificate expiring within this margin is renewed at startup.
const DEV_CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Names the development server certificate is valid for.
const DEV_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why TLS could not be configured. Messages name the offending file and say what to do; the underlying error
/// is the [`source`](std::error::Error::source), not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of certificate and key was configured.
    #[error("--tls-cert and --tls-key must be given together ({missing} is missing)")]
    IncompleteKeyPair {
        /// The flag that is missing.
        missing: &'static str,
    },
    /// A PEM file could not be read or holds no usable item of the expected kind.
    #[error("cannot load {what} from {path}")]
    Pem {
        /// What was expected (`certificate`, `private key`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds no certificate at all (e.g. it is not PEM).
    #[error("no PEM certificate found in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The certificate and key were read but rustls rejects them, e.g. because they do not belong together.
    #[error("certificate {cert} and key {key} cannot be used")]
    KeyPair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The underlying error.
        source: rustls::Error,
    },
    /// A CA file holds a certificate rustls cannot use as a trust anchor.
    #[error("CA certificate in {path} is not usable")]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// The underlying error.
        source: rustls::Error,
    },
    /// No trusted CA at all: neither `--ca`, nor system roots, nor a development CA.
    #[error("no trusted CA certificates found: pass --ca FILE (or --insecure for testing only)")]
    NoTrustAnchors,
    /// Reading or writing the development PKI failed.
    #[error("development PKI: cannot access {path}")]
    DevPkiIo {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The development PKI on disk is unusable and cannot be repaired without replacing the CA.
    #[error(
        "development PKI in {dir} is unusable ({reason}); remove the directory to create a new one"
    )]
    DevPkiBroken {
        /// The `tls` directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate development certificates")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected a configuration built from valid parts (a bug rather than an operator error).
    #[error("TLS configuration error")]
    Rustls(#[from] rustls::Error),
}

/// Paths of the development PKI in `<data-dir>/tls/`, so callers can log them or hand the CA to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The `tls` directory itself.
    pub dir: PathBuf,
    /// The CA certificate clients trust (`ca.pem`).
    pub ca_cert: PathBuf,
    /// The server certificate (`server.pem`).
    pub server_cert: PathBuf,
    /// The server's private key (`server-key.pem`, mode 0600).
    pub server_key: PathBuf,
}

/// Builds the TLS configuration of a listener.
///
/// With `cert` and `key` (PEM files: the chain, leaf first, and a PKCS#8/PKCS#1/SEC1 key) those are used; with
/// neither, the development PKI in `data_dir` (see [`ensure_dev_pki`]). Fails if only one is given, a file is
/// unreadable or not PEM, or the key does not match the certificate. Session resumption (stateful cache and
/// tickets) is enabled so reconnect storms are cheap; ALPN is `http/1.1`.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert.to_owned(), key.to_owned()),
        (None, None) => {
            let pki = ensure_dev_pki(data_dir)?;
            (pki.server_cert, pki.server_key)
        }
        (Some(_), None) => {
            return Err(TlsError::IncompleteKeyPair {
                missing: "--tls-key",
            });
        }
        (None, Some(_)) => {
            return Err(TlsError::IncompleteKeyPair {
                missing: "--tls-cert",
            });
        }
    };
    let chain = load_certificates(&cert)?;
    let private_key = load_private_key(&key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|source| TlsError::KeyPair { cert, key, source })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_CAPACITY);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Builds the TLS configuration of a client (service links, tools, tests).
///
/// Trusts `ca` if given; otherwise the system roots plus the development CA `<data_dir>/tls/ca.pem` if that file
/// exists. `insecure = true` disables certificate verification (handshake signatures are still checked) and logs
/// a warning: only for testing against servers whose certificate cannot be obtained. Fails if a CA file is
/// unreadable or unusable, or if nothing at all is trusted.
pub fn client_config(
    ca: Option<&Path>,
    data_dir: Option<&Path>,
    insecure: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?;
    let builder = if insecure {
        tracing::warn!(
            "TLS certificate verification is DISABLED (--insecure): any server can impersonate the peer"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateVerification(provider())))
    } else {
        builder.with_root_certificates(trust_anchors(ca, data_dir)?)
    };
    let mut config = builder.with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Creates the development PKI in `<data_dir>/tls/` unless it exists, and returns its paths.
///
/// The first run generates an ECDSA P-256 CA (`ca.pem`, `ca-key.pem`) and a server certificate (`server.pem`,
/// `server-key.pem`); later runs reuse them, renewing only a server certificate that is missing, damaged or
/// within 30 days of expiry. Keys are written with mode 0600. Safe when several processes or threads start at
/// once: they serialize on a lock file, and every file is written to a temporary name and renamed, so a reader
/// never sees a partial file. Logs where the CA certificate is so clients can be pointed at it. Blocking (file
/// I/O and a file lock): call it at startup, as [`server_config`] does.
pub fn ensure_dev_pki(data_dir: &Path) -> Result<DevPki, TlsError> {
    let dir = data_dir.join("tls");
    create_private_dir(&dir)?;
    let pki = DevPki {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        dir,
    };
    let ca_key_path = pki.dir.join("ca-key.pem");
    let _lock = lock_dir(&pki.dir)?;

    let (ca_cert, fresh_ca_key) = if pki.ca_cert.exists() {
        (read_dev_ca(&pki)?, None)
    } else {
        let key = KeyPair::generate()?;
        let cert = dev_ca_params(now_minus_a_day(), now_plus(DEV_CA_VALIDITY)).self_signed(&key)?;
        write_atomically(&ca_key_path, key.serialize_pem().as_bytes(), true)?;
        write_atomically(&pki.ca_cert, cert.pem().as_bytes(), false)?;
        tracing::info!(dir = %pki.dir.display(), "created development CA");
        (cert.der().clone(), Some(key))
    };

    if fresh_ca_key.is_some() || !dev_server_cert_is_current(&pki, &ca_cert) {
        let ca_key = match fresh_ca_key {
            Some(key) => key,
            None => read_dev_ca_key(&pki, &ca_key_path)?,
        };
        issue_dev_server_cert(&pki, ca_key)?;
        if !dev_server_cert_is_current(&pki, &ca_cert) {
            return Err(TlsError::DevPkiBroken {
                dir: pki.dir.clone(),
                reason: "ca-key.pem does not belong to ca.pem".to_owned(),
            });
        }
        tracing::info!(cert = %pki.server_cert.display(), "issued development server certificate");
    }
    tracing::info!(
        ca = %pki.ca_cert.display(),
        "development TLS in use; clients verify it with --ca {} (services sharing the data dir trust it already)",
        pki.ca_cert.display()
    );
    Ok(pki)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what: "certificate",
        path: path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        source,
    })
}

fn trust_anchors(ca: Option<&Path>, data_dir: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let add_file = |roots: &mut RootCertStore, path: &Path| -> Result<(), TlsError> {
        for cert in load_certificates(path)? {
            roots.add(cert).map_err(|source| TlsError::BadCa {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(())
    };
    if let Some(ca) = ca {
        add_file(&mut roots, ca)?;
        return Ok(roots);
    }
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(%err, "skipping unreadable system CA certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "loaded system CA certificates");
    if let Some(dev_ca) = data_dir
        .map(|dir| dir.join("tls").join("ca.pem"))
        .filter(|path| path.exists())
    {
        add_file(&mut roots, &dev_ca)?;
        tracing::debug!(ca = %dev_ca.display(), "trusting the development CA");
    }
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    Ok(roots)
}

/// Accepts any server certificate but still checks handshake signatures; used only for `--insecure`.
#[derive(Debug)]
struct NoCertificateVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The development CA's parameters. Apart from the dates they are fixed, so an [`Issuer`] rebuilt from them and
/// the kept key signs certificates that chain to the CA certificate on disk.
fn dev_ca_params(
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "wsmq");
    params
        .distinguished_name
        .push(DnType::CommonName, "wsmq development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("localhost".to_owned()),
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8)),
            GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
                std::net::Ipv6Addr::LOCALHOST.octets(),
                128,
            )),
        ],
        excluded_subtrees: Vec::new(),
    });
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn issue_dev_server_cert(pki: &DevPki, ca_key: KeyPair) -> Result<(), TlsError> {
    // Only the CA's name and key matter for signing; its validity dates are not part of the issued certificate.
    let issuer = Issuer::new(dev_ca_params(now_minus_a_day(), now_minus_a_day()), ca_key);
    let mut params = CertificateParams::new(DEV_SERVER_NAMES.map(str::to_owned).to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now_minus_a_day();
    params.not_after = now_plus(DEV_CERT_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_atomically(&pki.server_key, key.serialize_pem().as_bytes(), true)?;
    write_atomically(&pki.server_cert, cert.pem().as_bytes(), false)
}

/// Whether the server certificate on disk exists, matches its key, chains to `ca` and stays valid for the
/// renewal margin. Any problem means "issue a new one", so it is logged at debug level only.
fn dev_server_cert_is_current(pki: &DevPki, ca: &CertificateDer<'static>) -> bool {
    match check_dev_server_cert(pki, ca) {
        Ok(()) => true,
        Err(reason) => {
            tracing::debug!(%reason, cert = %pki.server_cert.display(), "development server certificate needs renewal");
            false
        }
    }
}

fn check_dev_server_cert(pki: &DevPki, ca: &CertificateDer<'static>) -> Result<(), String> {
    let provider = provider();
    let chain = load_certificates(&pki.server_cert).map_err(|err| err.to_string())?;
    let key = load_private_key(&pki.server_key).map_err(|err| err.to_string())?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| err.to_string())?;
    CertifiedKey::new(chain.clone(), signing_key)
        .keys_match()
        .map_err(|err| err.to_string())?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|err| err.to_string())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|err| err.to_string())?;
    let renewal_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(DEV_CERT_RENEW_BEFORE);
    let (leaf, intermediates) = chain.split_first().ok_or("empty certificate chain")?;
    for name in DEV_SERVER_NAMES {
        let name = ServerName::try_from(name).map_err(|err| err.to_string())?;
        verifier
            .verify_server_cert(
                leaf,
                intermediates,
                &name,
                &[],
                UnixTime::since_unix_epoch(renewal_time),
            )
            .map_err(|err| err.to_string())?;
    }
    Ok(())
}

fn read_dev_ca(pki: &DevPki) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_file(&pki.ca_cert).map_err(|err| TlsError::DevPkiBroken {
        dir: pki.dir.clone(),
        reason: format!("ca.pem: {err}"),
    })
}

fn read_dev_ca_key(pki: &DevPki, path: &Path) -> Result<KeyPair, TlsError> {
    let broken = |reason: String| TlsError::DevPkiBroken {
        dir: pki.dir.clone(),
        reason,
    };
    let pem = fs::read_to_string(path)
        .map_err(|err| broken(format!("cannot read ca-key.pem to renew server.pem: {err}")))?;
    KeyPair::from_pem(&pem).map_err(|err| broken(format!("ca-key.pem: {err}")))
}

fn now_plus(offset: Duration) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc().saturating_add(time::Duration::seconds(offset.as_secs() as i64))
}

/// Backdated by a day so clients with a slightly slow clock accept a certificate issued a moment ago.
fn now_minus_a_day() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc().saturating_sub(time::Duration::days(1))
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| TlsError::DevPkiIo {
        path: dir.to_owned(),
        source,
    })
}

/// Takes an exclusive lock on `<dir>/.lock`, held until the returned file is dropped, so concurrent starts
/// create the PKI once. On a filesystem without locking the temporary-file-and-rename writes still keep every
/// file whole.
fn lock_dir(dir: &Path) -> Result<File, TlsError> {
    let path = dir.join(".lock");
    let io_error = |source| TlsError::DevPkiIo {
        path: path.clone(),
        source,
    };
    // A read-only descriptor is enough to lock, which lets a pre-provisioned, read-only PKI directory work.
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .or_else(|_| File::open(&path))
        .map_err(io_error)?;
    match file.lock() {
        Ok(()) => Ok(file),
        Err(err) if err.kind() == io::ErrorKind::Unsupported => {
            tracing::warn!(%err, "cannot lock the development PKI directory; concurrent first starts may race");
            Ok(file)
        }
        Err(err) => Err(io_error(err)),
    }
}

/// Writes `contents` to a temporary file next to `path`, syncs it and renames it over `path`, so readers see
/// either the old or the new file, never a partial one.
fn write_atomically(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_error = |source| TlsError::DevPkiIo {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = private;
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    if let Err(err) = written.and_then(|()| fs::rename(&temp, path)) {
        let _ = fs::remove_file(&temp);
        return Err(io_error(err));
    }
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_of_cert_and_key_is_an_error() {
        let dir = Path::new("unused");
        let cert_only = server_config(Some(Path::new("c.pem")), None, dir);
        assert!(matches!(
            cert_only,
            Err(TlsError::IncompleteKeyPair {
                missing: "--tls-key"
            })
        ));
        let key_only = server_config(None, Some(Path::new("k.pem")), dir);
        assert!(matches!(
            key_only,
            Err(TlsError::IncompleteKeyPair {
                missing: "--tls-cert"
            })
        ));
    }

    #[test]
    fn dev_server_certificate_is_renewed_when_damaged() -> Result<(), Box<dyn std::error::Error>> {
        let data = tempfile::tempdir()?;
        let pki = ensure_dev_pki(data.path())?;
        let ca_before = fs::read(&pki.ca_cert)?;
        fs::write(&pki.server_cert, "not a certificate")?;
        let again = ensure_dev_pki(data.path())?;
        assert_eq!(
            fs::read(&again.ca_cert)?,
            ca_before,
            "the CA must survive a server certificate renewal"
        );
        let ca = CertificateDer::from_pem_file(&again.ca_cert)?;
        assert!(dev_server_cert_is_current(&again, &ca));
        Ok(())
    }

    #[test]
    fn dev_pki_with_a_foreign_ca_key_is_reported_broken() -> Result<(), Box<dyn std::error::Error>>
    {
        let data = tempfile::tempdir()?;
        let pki = ensure_dev_pki(data.path())?;
        fs::write(
            pki.dir.join("ca-key.pem"),
            KeyPair::generate()?.serialize_pem(),
        )?;
        fs::remove_file(&pki.server_cert)?;
        let err = ensure_dev_pki(data.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("ca-key.pem does not belong to ca.pem"),
            "{err}"
        );
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn dev_private_keys_are_readable_by_owner_only() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = tempfile::tempdir()?;
        let pki = ensure_dev_pki(data.path())?;
        for key in [pki.server_key.clone(), pki.dir.join("ca-key.pem")] {
            assert_eq!(
                fs::metadata(&key)?.permissions().mode() & 0o777,
                0o600,
                "{}",
                key.display()
            );
        }
        Ok(())
    }
}
