//! TLS interception with placeholder substitution (docs/ARCHITECTURE.md, "Secrets").
//!
//! A guest TCP flow to an intercepted port (`tls.interceptedPorts`) that policy allows is
//! connected to its destination as any other, then handed to [`Interceptor::intercept`]
//! instead of the raw pump: the ClientHello is read (flow.rs), the upstream TLS connection
//! is made and verified first, then the guest's handshake is finished with a leaf
//! certificate for its SNI (certs.rs, signed by the installation's CA, ca.rs), and HTTP/1
//! or HTTP/2 is terminated on both sides with hyper (http.rs), where substitute.rs decides
//! per request what is substituted and what is blocked. Flows that cannot be intercepted
//! (no SNI, `tls.bypass`, not TLS, non-HTTP ALPN) are spliced raw.
//!
//! Without an [`Interceptor`] (no `tls` in the config) none of this runs.

mod ca;
mod certs;
mod flow;
mod http;
pub mod substitute;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};

pub use ca::CertificateAuthority;

use crate::config::NetConfig;
use crate::error::NetError;
use crate::secrets_config::{SecretValue, TlsConfig};
use substitute::{Secrets, Violation};

/// What the stack knows about an intercepted flow.
#[derive(Debug, Clone)]
pub struct FlowFacts {
    /// The guest's destination.
    pub dst: SocketAddr,
    /// The names this sandbox resolved (through the stack's DNS) to `dst`, lower case;
    /// plus `host.microsandbox.internal` for the host alias. An SNI among them is
    /// "DNS-pinned".
    pub names: Vec<String>,
}

/// The per-sandbox interception state: config, secrets, CA and leaf cache, upstream trust.
pub struct Interceptor {
    tls: TlsConfig,
    secrets: Secrets,
    ca_pem: String,
    leaves: certs::LeafCache,
    provider: Arc<CryptoProvider>,
    /// Upstream client configs (ALPN set per flow): verifying, and accepting anything.
    client_verified: Arc<ClientConfig>,
    client_any: Arc<ClientConfig>,
    terminate: watch::Sender<bool>,
    /// Request bodies buffered for substitution, in KiB, across the sandbox's flows.
    body_budget: Arc<Semaphore>,
}

/// Most request-body bytes buffered at once per sandbox (http.rs).
const BODY_BUDGET_KIB: usize = 64 * 1024;

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Interceptor {
    /// Build the interceptor of a sandbox: `cfg.tls` must be present. Upstream trust is
    /// the host's roots (webpki-roots when the host has none) plus the PEM files of
    /// `tls.upstreamCaCertPaths`.
    pub fn new(
        cfg: &NetConfig,
        values: Vec<SecretValue>,
        ca: CertificateAuthority,
    ) -> Result<Arc<Interceptor>, NetError> {
        let tls = cfg
            .tls
            .clone()
            .ok_or_else(|| NetError::Config("tls interception is not configured".into()))?;
        let secrets = Secrets::new(&cfg.secrets, &values);
        drop(values);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for path in &tls.upstream_ca_cert_paths {
            let err = |e: String| NetError::Tls(format!("tls.upstreamCaCertPaths {path}: {e}"));
            let mut n = 0;
            for c in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                let c = c.map_err(|e| err(e.to_string()))?;
                roots.add(c).map_err(|e| err(e.to_string()))?;
                n += 1;
            }
            if n == 0 {
                return Err(err("no certificate in the file".into()));
            }
        }
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let tls_err = |e: rustls::Error| NetError::Tls(e.to_string());
        let client_verified = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(tls_err)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client_any = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
            .with_no_client_auth();
        let ca_pem = ca.cert_pem().to_owned();
        let leaves = certs::LeafCache::new(Arc::new(ca))?;
        Ok(Arc::new(Interceptor {
            tls,
            secrets,
            ca_pem,
            leaves,
            provider,
            client_verified: Arc::new(client_verified),
            client_any: Arc::new(client_any),
            terminate: watch::channel(false).0,
            body_budget: Arc::new(Semaphore::new(BODY_BUDGET_KIB)),
        }))
    }

    /// The CA certificate (PEM) the guest must trust.
    pub fn ca_cert_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Env vars of secrets configured without a value (their placeholders are blocked).
    pub fn missing_values(&self) -> Vec<String> {
        self.secrets.missing_values()
    }

    /// Resolves once a `block-and-terminate` violation happened; the runtime then stops
    /// the sandbox.
    pub async fn terminate_requested(&self) {
        let mut rx = self.terminate.subscribe();
        let _ = rx.wait_for(|t| *t).await;
    }

    /// Whether TCP to `port` is intercepted.
    pub fn intercepts(&self, port: u16) -> bool {
        self.tls.intercepted_ports.contains(&port)
    }

    /// Whether UDP to `port` is dropped (QUIC, so that clients fall back to TCP).
    pub fn blocks_udp(&self, port: u16) -> bool {
        self.tls.block_quic && self.intercepts(port)
    }

    /// Run one intercepted flow: `guest` carries what the guest sent to the destination,
    /// `upstream` is the host connection to it. Returns when the flow is over; never
    /// panics on bad input (a panic elsewhere is caught by the task that spawned this).
    pub async fn intercept<G, U>(self: Arc<Self>, guest: G, upstream: U, facts: FlowFacts)
    where
        G: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        flow::run(self, guest, upstream, facts).await
    }

    /// Act on a violation: log (unless the action is a silent block) and, for
    /// block-and-terminate, signal [`Interceptor::terminate_requested`].
    pub(crate) fn violation(&self, v: &Violation) {
        use crate::secrets_config::ViolationKind;
        match v.action {
            ViolationKind::Block => {}
            ViolationKind::BlockAndLog => eprintln!("network: secret violation: {v}"),
            ViolationKind::BlockAndTerminate => {
                eprintln!("network: secret violation: {v} (stopping the sandbox)");
                self.terminate.send_replace(true);
            }
        }
    }
}

/// `verifyUpstream: false`: any certificate is accepted (the handshake signatures are
/// still checked), and the flow counts as not verified.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
