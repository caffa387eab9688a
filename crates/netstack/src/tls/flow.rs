//! One intercepted flow up to HTTP: read the ClientHello (recording the bytes), decide
//! between splicing and intercepting, connect TLS upstream first, then finish the
//! guest's handshake with a leaf for its SNI and the ALPN upstream chose.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use super::{http, FlowFacts, Interceptor};
use crate::secrets_config::host_pattern_matches;

/// Cap on each handshake step (ClientHello, upstream handshake, guest handshake).
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read while looking for the ClientHello (rustls bounds the message itself).
const MAX_HELLO_BYTES: usize = 64 * 1024;

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

pub(super) async fn run<G, U>(ic: Arc<Interceptor>, guest: G, upstream: U, facts: FlowFacts)
where
    G: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut acceptor = LazyConfigAcceptor::new(Acceptor::default(), Sniff::new(guest));
    let start = match tokio::time::timeout(STEP_TIMEOUT, &mut acceptor).await {
        Ok(Ok(s)) => s,
        // Not TLS (plain HTTP on 443, another protocol): replay what was read, splice.
        Ok(Err(_)) => {
            if let Some(g) = acceptor.take_io() {
                splice(g, upstream).await;
            }
            return;
        }
        Err(_) => return, // silent client
    };
    let hello = start.client_hello();
    let sni = hello.server_name().map(normalize_name);
    let offered: Option<Vec<Vec<u8>>> = hello.alpn().map(|a| a.map(|p| p.to_vec()).collect());
    let Some(sni) = sni.filter(|s| !s.is_empty()) else {
        return splice(start.io, upstream).await;
    };
    if ic.tls.bypass.iter().any(|p| host_pattern_matches(p, &sni)) {
        return splice(start.io, upstream).await;
    }
    // The client's ALPN ∩ {h2, http/1.1}, in its order; none offered: none.
    let alpn: Vec<Vec<u8>> = match &offered {
        None => vec![],
        Some(o) => {
            let http: Vec<Vec<u8>> = o
                .iter()
                .filter(|p| p.as_slice() == H2 || p.as_slice() == H1)
                .cloned()
                .collect();
            if http.is_empty() && !o.is_empty() {
                return splice(start.io, upstream).await; // not HTTP
            }
            http
        }
    };
    let Ok(server_name) = ServerName::try_from(sni.clone()) else {
        return splice(start.io, upstream).await;
    };
    // Upstream first: a bad upstream certificate fails the guest's handshake (it gets no
    // leaf), and the upstream never sees a request.
    let verify = ic.tls.verify_upstream;
    let mut ccfg = if verify {
        ic.client_verified.as_ref().clone()
    } else {
        ic.client_any.as_ref().clone()
    };
    ccfg.alpn_protocols = alpn;
    let connecting = TlsConnector::from(Arc::new(ccfg)).connect(server_name, upstream);
    let up = match tokio::time::timeout(STEP_TIMEOUT, connecting).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            eprintln!("network: tls: upstream {sni} ({}): {e}", facts.dst);
            return;
        }
        Err(_) => {
            eprintln!(
                "network: tls: upstream {sni} ({}): handshake timed out",
                facts.dst
            );
            return;
        }
    };
    let chosen = up.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    let leaf = match ic.leaves.get(&sni).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("network: tls: {e}");
            return;
        }
    };
    let Ok(builder) = ServerConfig::builder_with_provider(ic.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    else {
        return;
    };
    let mut scfg = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(leaf)));
    scfg.alpn_protocols = chosen.iter().cloned().collect();
    // Each flow has its own config: tickets could never be used again.
    scfg.send_tls13_tickets = 0;
    let mut io = start.io;
    io.stop();
    let start = tokio_rustls::StartHandshake::from_parts(start.accepted, io);
    let guest = match tokio::time::timeout(STEP_TIMEOUT, start.into_stream(Arc::new(scfg))).await {
        Ok(Ok(g)) => g,
        _ => return,
    };
    let h2 = chosen.as_deref() == Some(H2);
    let ctx = http::FlowCtx {
        dns_pinned: facts.names.iter().any(|n| normalize_name(n) == sni),
        sni,
        upstream_verified: verify,
    };
    http::serve(ic, guest, up, h2, ctx).await
}

/// Lower case, no trailing dot.
pub(super) fn normalize_name(n: &str) -> String {
    n.trim_end_matches('.').to_ascii_lowercase()
}

/// Splice raw: replay the bytes read while sniffing, then copy both ways.
async fn splice<G, U>(mut g: Sniff<G>, mut upstream: U)
where
    G: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let seen = std::mem::take(&mut g.seen);
    g.stop();
    if upstream.write_all(&seen).await.is_err() {
        return;
    }
    drop(seen);
    let _ = tokio::io::copy_bidirectional(&mut g, &mut upstream).await;
}

struct Fixed(Arc<CertifiedKey>);

impl std::fmt::Debug for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fixed")
    }
}

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The guest stream while the ClientHello is read: every byte read is recorded (for a
/// replay when the flow is spliced after all) and writes are swallowed (rustls' alert for
/// a stream that is not TLS must not reach a guest that spoke plain HTTP). `stop` makes
/// it transparent.
pub(super) struct Sniff<IO> {
    io: IO,
    seen: Vec<u8>,
    sniffing: bool,
}

impl<IO> Sniff<IO> {
    fn new(io: IO) -> Self {
        Sniff {
            io,
            seen: Vec::new(),
            sniffing: true,
        }
    }

    fn stop(&mut self) {
        self.sniffing = false;
        self.seen = Vec::new();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniff<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.sniffing {
            if let Poll::Ready(Ok(())) = r {
                this.seen.extend_from_slice(&buf.filled()[before..]);
                if this.seen.len() > MAX_HELLO_BYTES {
                    return Poll::Ready(Err(io::Error::other("ClientHello too long")));
                }
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniff<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sniffing {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sniffing {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
