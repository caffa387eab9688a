//! TLS interception without a VM: the "guest" is a rustls client (trusting the
//! interception CA) on one end of a duplex whose other end runs `Interceptor::intercept`;
//! the upstream is a local TLS server (its own test CA, trusted through
//! `tls.upstreamCaCertPaths`) that records every request it receives. Every assertion
//! is on what the upstream really got.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use msb_netstack::secrets_config::SecretValue;
use msb_netstack::{CertificateAuthority, FlowFacts, Interceptor, NetConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

const VALUE: &str = "S3cr3t-value-7f3a";
const PLACEHOLDER: &str = "$MSB_API_KEY";
const ALLOWED: &str = "api.allowed.test";
const OTHER: &str = "other.test";

fn tmpdir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "msb-tls-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA and a server certificate signed by it.
struct UpstreamPki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn upstream_pki(names: &[&str]) -> UpstreamPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "test upstream CA");
    let ca = CertifiedIssuer::self_signed(p, ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    UpstreamPki {
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    }
}

#[derive(Debug, Clone)]
struct Seen {
    version: hyper::Version,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    /// Everything received, as one string (to look for the value or the placeholder).
    fn all(&self) -> String {
        let mut s = self.uri.clone();
        for (n, v) in &self.headers {
            s.push_str(&format!("\n{n}: {}", String::from_utf8_lossy(v)));
        }
        s.push('\n');
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }
}

/// A TLS server on 127.0.0.1 speaking h2 or HTTP/1.1 (by ALPN) that records requests;
/// `handshakes` counts TLS handshakes that completed.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    handshakes: Arc<AtomicUsize>,
}

async fn upstream(pki: &UpstreamPki) -> Upstream {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (s2, h2) = (seen.clone(), handshakes.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (acceptor, seen, hs) = (acceptor.clone(), s2.clone(), h2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                hs.fetch_add(1, Ordering::Relaxed);
                let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        // An upgrade ("echo" protocol): 101, then echo what arrives.
                        let upgrade = req.headers().contains_key("upgrade");
                        if upgrade {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(u) = on.await {
                                    let (mut r, mut w) = tokio::io::split(TokioIo::new(u));
                                    let _ = tokio::io::copy(&mut r, &mut w).await;
                                }
                            });
                        }
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes().to_vec());
                        let body = body.unwrap_or_else(|_| b"<BODY ERROR>".to_vec());
                        seen.lock().unwrap().push(Seen {
                            version: parts.version,
                            uri: parts.uri.to_string(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                                .collect(),
                            body,
                        });
                        if upgrade {
                            let r = Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "echo")
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            return Ok::<_, std::convert::Infallible>(r);
                        }
                        Ok(Response::new(Full::new(Bytes::from_static(b"upstream ok"))))
                    }
                });
                let io = TokioIo::new(tls);
                if is_h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    Upstream {
        addr,
        seen,
        handshakes,
    }
}

struct Setup {
    ic: Arc<Interceptor>,
    up: Upstream,
    /// The upstream's CA, for clients that expect a splice.
    upstream_ca: String,
}

/// An interceptor with one secret (API_KEY -> api.allowed.test, bodies and queries too),
/// `extra` merged into `tls`, against a fresh upstream whose certificate names
/// `cert_names` and is trusted (`trusted`) or not.
async fn setup(tls_extra: &str, cert_names: &[&str], trusted: bool, action: &str) -> Setup {
    let pki = upstream_pki(cert_names);
    let dir = tmpdir("setup");
    let ca_path = dir.join("upstream-ca.pem");
    let trusted_pem = if trusted {
        pki.ca_pem.clone()
    } else {
        upstream_pki(cert_names).ca_pem // another CA: the upstream is not trusted
    };
    std::fs::write(&ca_path, &trusted_pem).unwrap();
    let json = format!(
        r#"{{"guestMac":"02:00:00:00:00:02","guestIp":"10.0.2.15","gatewayIp":"10.0.2.2","prefixLen":24,
        "tls":{{"upstreamCaCertPaths":[{ca:?}]{tls_extra}}},
        "secrets":[{{"envVar":"API_KEY","placeholder":"{PLACEHOLDER}","allowedHosts":["{ALLOWED}"],
            "injection":{{"headers":true,"basicAuth":true,"queryParams":true,"body":true}},
            "onViolation":{{"action":"{action}"}}}}]}}"#,
        ca = ca_path.to_str().unwrap(),
    );
    let cfg = NetConfig::from_json(&json).unwrap();
    let values: Vec<SecretValue> =
        serde_json::from_str(&format!(r#"[{{"envVar":"API_KEY","value":"{VALUE}"}}]"#)).unwrap();
    let ca = CertificateAuthority::load_or_create(&dir.join("tls")).unwrap();
    let ic = Interceptor::new(&cfg, values, ca).unwrap();
    Setup {
        ic,
        up: upstream(&pki).await,
        upstream_ca: pki.ca_pem,
    }
}

fn roots(pem: &str) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(pem) {
        r.add(c).unwrap();
    }
    r
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// Start an intercepted flow to the upstream and return the guest's end of it.
async fn flow(s: &Setup, names: &[&str]) -> DuplexStream {
    let (guest, theirs) = tokio::io::duplex(64 * 1024);
    let tcp = TcpStream::connect(s.up.addr).await.unwrap();
    let facts = FlowFacts {
        dst: s.up.addr,
        names: names.iter().map(|n| n.to_string()).collect(),
    };
    tokio::spawn(s.ic.clone().intercept(theirs, tcp, facts));
    guest
}

/// A guest TLS client over `io`: SNI `sni` (None: no SNI), trusting `ca_pem`.
async fn guest_tls(
    io: DuplexStream,
    sni: Option<&str>,
    alpn: &[&[u8]],
    ca_pem: &str,
) -> std::io::Result<TlsStream<DuplexStream>> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => {
            cfg.enable_sni = false;
            ServerName::try_from("127.0.0.1").unwrap()
        }
    };
    let c = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    tokio::time::timeout(Duration::from_secs(15), c.connect(name, io))
        .await
        .map_err(|_| std::io::Error::other("handshake timeout"))?
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn http_client(tls: TlsStream<DuplexStream>) -> Sender {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(c);
        Sender::H2(s)
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(c);
        Sender::H1(s)
    }
}

/// Send a request; (status, body) or None when the connection failed.
async fn send(s: &mut Sender, req: Request<Full<Bytes>>) -> Option<(u16, String)> {
    let r = match s {
        Sender::H1(s) => {
            s.ready().await.ok()?;
            s.send_request(req).await
        }
        Sender::H2(s) => {
            s.ready().await.ok()?;
            s.send_request(req).await
        }
    };
    let r = r.ok()?;
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn get(uri: &str, host: Option<&str>, auth: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri(uri).header("authorization", auth);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn bearer() -> String {
    format!("Bearer {PLACEHOLDER}")
}

async fn client(s: &Setup, sni: &str, names: &[&str], alpn: &[&[u8]]) -> Sender {
    let g = flow(s, names).await;
    let tls = guest_tls(g, Some(sni), alpn, &s.ic.ca_cert_pem())
        .await
        .expect("guest handshake");
    http_client(tls).await
}

#[tokio::test]
async fn h1_header_substitution() {
    let s = setup("", &[ALLOWED], true, "block-and-log").await;
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, get("/v1/x", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 200);
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, hyper::Version::HTTP_11);
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {VALUE}")
    );
    assert_eq!(seen[0].uri, "/v1/x");
}

#[tokio::test]
async fn h2_header_query_and_basic_substitution() {
    let s = setup("", &[ALLOWED], true, "block-and-log").await;
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"h2", b"http/1.1"]).await;
    let uri = format!("https://{ALLOWED}/q?key={PLACEHOLDER}&x=1");
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("user:{PLACEHOLDER}"))
    };
    let mut req = get(&uri, None, &bearer());
    req.headers_mut().insert(
        "proxy-authorization",
        format!("Basic {basic}").parse().unwrap(),
    );
    let (st, _) = send(&mut c, req).await.unwrap();
    assert_eq!(st, 200);
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, hyper::Version::HTTP_2);
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {VALUE}")
    );
    assert!(
        seen[0].uri.ends_with(&format!("/q?key={VALUE}&x=1")),
        "{}",
        seen[0].uri
    );
    let want = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("user:{VALUE}"))
    };
    assert_eq!(
        seen[0].header("proxy-authorization").unwrap(),
        format!("Basic {want}")
    );
}

/// Not allowed, not pinned, Host or :authority differs from the SNI: 403, and the upstream
/// receives no request at all.
#[tokio::test]
async fn blocked_when_a_gate_fails() {
    let s = setup("", &[ALLOWED, OTHER], true, "block-and-log").await;
    // SNI not among the secret's allowed hosts.
    let mut c = client(&s, OTHER, &[OTHER], &[b"http/1.1"]).await;
    let (st, body) = send(&mut c, get("/", Some(OTHER), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("API_KEY") && !body.contains(VALUE), "{body}");
    // Not DNS-pinned: the sandbox never resolved the name to this address.
    let mut c = client(&s, ALLOWED, &[OTHER], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, get("/", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 403);
    // Host differs from the SNI (HTTP/1).
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, get("/", Some(OTHER), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 403);
    // :authority differs from the SNI (HTTP/2).
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"h2"]).await;
    let (st, _) = send(&mut c, get(&format!("https://{OTHER}/"), None, &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 403);
    assert!(s.up.seen.lock().unwrap().is_empty());
    // A request without the placeholder to another host goes through, untouched.
    let mut c = client(&s, OTHER, &[OTHER], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, get("/plain", Some(OTHER), "Bearer other"))
        .await
        .unwrap();
    assert_eq!(st, 200);
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization").unwrap(), "Bearer other");
}

/// Keep-alive: every request has its own gates; the second, with another Host on the same
/// connection, is refused and the connection closed.
#[tokio::test]
async fn keep_alive_second_host_refused() {
    let s = setup("", &[ALLOWED], true, "block-and-log").await;
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, get("/1", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 200);
    let (st, _) = send(&mut c, get("/2", Some(OTHER), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 403);
    assert!(send(&mut c, get("/3", Some(ALLOWED), &bearer()))
        .await
        .is_none());
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/1");
}

#[tokio::test]
async fn bad_upstream_cert_fails_guest_handshake() {
    let s = setup("", &[ALLOWED], false, "block-and-log").await;
    let g = flow(&s, &[ALLOWED]).await;
    let r = guest_tls(g, Some(ALLOWED), &[b"http/1.1"], &s.ic.ca_cert_pem()).await;
    assert!(r.is_err(), "the guest's handshake must fail");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.up.seen.lock().unwrap().is_empty());
    // The upstream's handshake did not complete either (it was aborted on its cert).
    assert_eq!(s.up.handshakes.load(Ordering::Relaxed), 0);
}

/// `verifyUpstream: false`: the flow works but the secret (requireTlsIdentity) is not
/// substituted: blocked.
#[tokio::test]
async fn unverified_upstream_blocks_secret() {
    let s = setup(r#","verifyUpstream":false"#, &[ALLOWED], false, "block").await;
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, get("/", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 403);
    assert!(s.up.seen.lock().unwrap().is_empty());
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, get("/", Some(ALLOWED), "none")).await.unwrap();
    assert_eq!(st, 200);
}

/// Bypassed names and ClientHellos without SNI are spliced: the guest talks TLS with the
/// upstream itself (it must trust the upstream's CA, not ours) and nothing is
/// substituted.
#[tokio::test]
async fn bypass_and_no_sni_are_spliced() {
    let s = setup(
        r#","bypass":["*.allowed.test"]"#,
        &[ALLOWED, "127.0.0.1"],
        true,
        "block-and-log",
    )
    .await;
    // Bypass: our CA would not do; the upstream's does.
    let g = flow(&s, &[ALLOWED]).await;
    assert!(
        guest_tls(g, Some(ALLOWED), &[b"http/1.1"], &s.ic.ca_cert_pem())
            .await
            .is_err()
    );
    let g = flow(&s, &[ALLOWED]).await;
    let tls = guest_tls(g, Some(ALLOWED), &[b"http/1.1"], &s.upstream_ca)
        .await
        .unwrap();
    let mut c = http_client(tls).await;
    let (st, _) = send(&mut c, get("/bypass", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 200);
    // No SNI.
    let g = flow(&s, &[ALLOWED]).await;
    let tls = guest_tls(g, None, &[b"h2"], &s.upstream_ca).await.unwrap();
    let mut c = http_client(tls).await;
    let (st, _) = send(&mut c, get("https://127.0.0.1/nosni", None, &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 200);
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert!(r.all().contains(PLACEHOLDER) && !r.all().contains(VALUE));
    }
}

/// Plain HTTP to an intercepted port is spliced byte for byte (replayed after sniffing).
#[tokio::test]
async fn plain_http_is_spliced() {
    let s = setup("", &[ALLOWED], true, "block-and-log").await;
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = raw.local_addr().unwrap();
    let got = tokio::spawn(async move {
        let (mut t, _) = raw.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            let k = t.read(&mut buf[n..]).await.unwrap();
            assert!(k > 0);
            n += k;
        }
        t.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        buf.truncate(n);
        buf
    });
    let (mut guest, theirs) = tokio::io::duplex(64 * 1024);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let facts = FlowFacts {
        dst: addr,
        names: vec![],
    };
    tokio::spawn(s.ic.clone().intercept(theirs, tcp, facts));
    let req =
        format!("GET / HTTP/1.1\r\nHost: {ALLOWED}\r\nAuthorization: Bearer {PLACEHOLDER}\r\n\r\n");
    guest.write_all(req.as_bytes()).await.unwrap();
    let mut resp = [0u8; 25];
    guest.read_exact(&mut resp).await.unwrap();
    assert_eq!(&resp, b"HTTP/1.1 204 No Content\r\n");
    assert_eq!(got.await.unwrap(), req.as_bytes());
}

/// Many distinct headers over several requests on one h2 connection (a large HPACK
/// dynamic table on both hops): every request still arrives substituted and complete.
#[tokio::test]
async fn h2_large_hpack_table() {
    let s = setup("", &[ALLOWED], true, "block-and-log").await;
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"h2"]).await;
    for round in 0..6 {
        let mut req = get(&format!("https://{ALLOWED}/r{round}"), None, &bearer());
        for j in 0..60 {
            req.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(format!("x-h-{round}-{j}").as_bytes())
                    .unwrap(),
                format!("value-{round}-{j}-{}", "v".repeat(40))
                    .parse()
                    .unwrap(),
            );
        }
        req.headers_mut().insert(
            "x-key",
            format!("k={PLACEHOLDER};r={round}").parse().unwrap(),
        );
        let (st, _) = send(&mut c, req).await.unwrap();
        assert_eq!(st, 200);
    }
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6);
    for (round, r) in seen.iter().enumerate() {
        assert_eq!(
            r.header("authorization").unwrap(),
            format!("Bearer {VALUE}")
        );
        assert_eq!(r.header("x-key").unwrap(), format!("k={VALUE};r={round}"));
        for j in 0..60 {
            assert_eq!(
                r.header(&format!("x-h-{round}-{j}")).unwrap(),
                format!("value-{round}-{j}-{}", "v".repeat(40))
            );
        }
        assert!(!r.all().contains(PLACEHOLDER));
    }
}

fn post(uri: &str, host: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .header("content-length", body.len());
    if let Some(h) = host {
        b = b.header("host", h);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// injectBody: a Content-Length body arrives substituted with a corrected length (h1 and
/// h2); a body with the placeholder to another host is blocked.
#[tokio::test]
async fn body_substitution_fixes_content_length() {
    let s = setup("", &[ALLOWED, OTHER], true, "block-and-log").await;
    let body = format!(r#"{{"key":"{PLACEHOLDER}","n":1}}"#);
    let want = format!(r#"{{"key":"{VALUE}","n":1}}"#);
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, post("/b", Some(ALLOWED), &body))
        .await
        .unwrap();
    assert_eq!(st, 200);
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"h2"]).await;
    let (st, _) = send(&mut c, post(&format!("https://{ALLOWED}/b2"), None, &body))
        .await
        .unwrap();
    assert_eq!(st, 200);
    let mut c = client(&s, OTHER, &[OTHER], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, post("/b3", Some(OTHER), &body)).await.unwrap();
    assert_eq!(st, 403);
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(String::from_utf8_lossy(&r.body), want);
        assert_eq!(r.header("content-length").unwrap(), want.len().to_string());
    }
}

/// A chunked HTTP/1 body (no Content-Length) is substituted as it streams.
#[tokio::test]
async fn chunked_body_substitution() {
    let s = setup("", &[ALLOWED], true, "block-and-log").await;
    let g = flow(&s, &[ALLOWED]).await;
    let mut tls = guest_tls(g, Some(ALLOWED), &[b"http/1.1"], &s.ic.ca_cert_pem())
        .await
        .unwrap();
    // The placeholder split across two chunks.
    let (a, b) = PLACEHOLDER.split_at(5);
    let req = format!(
        "POST /c HTTP/1.1\r\nHost: {ALLOWED}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\nk={a}\r\n{:x}\r\n{b};\r\n0\r\n\r\n",
        a.len() + 2,
        b.len() + 1
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&seen[0].body),
        format!("k={VALUE};")
    );
}

/// block-and-terminate resolves `terminate_requested`.
#[tokio::test]
async fn block_and_terminate_signals() {
    let s = setup("", &[ALLOWED, OTHER], true, "block-and-terminate").await;
    let ic = s.ic.clone();
    let waiter = tokio::spawn(async move { ic.terminate_requested().await });
    let mut c = client(&s, OTHER, &[OTHER], &[b"http/1.1"]).await;
    let (st, _) = send(&mut c, get("/", Some(OTHER), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 403);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("terminate requested")
        .unwrap();
    assert!(s.ic.missing_values().is_empty());
}

/// The CA is created once (0600 key, 0700 dir) and loaded again as is.
#[test]
fn ca_created_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("ca").join("tls");
    let a = CertificateAuthority::load_or_create(&dir).unwrap();
    let b = CertificateAuthority::load_or_create(&dir).unwrap();
    assert_eq!(a.cert_pem(), b.cert_pem());
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.join("ca.key")), 0o600);
    assert_eq!(mode(dir.clone()), 0o700);
    assert!(a.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
}

/// HTTP/1 upgrade (WebSocket-style): the handshake's headers are substituted, then the
/// connection is spliced both ways.
#[tokio::test]
async fn upgrade_is_substituted_then_spliced() {
    let s = setup("", &[ALLOWED], true, "block-and-log").await;
    let g = flow(&s, &[ALLOWED]).await;
    let mut tls = guest_tls(g, Some(ALLOWED), &[b"http/1.1"], &s.ic.ca_cert_pem())
        .await
        .unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {ALLOWED}\r\nConnection: Upgrade\r\nUpgrade: echo\r\nAuthorization: Bearer {PLACEHOLDER}\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tls.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for msg in [&b"ping"[..], b"second message"] {
        tls.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {VALUE}")
    );
}

/// Figures (printed; run with --nocapture): new intercepted connections per second,
/// keep-alive requests per second, and an 8 MiB substituted Content-Length body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures() {
    let s = setup("", &[ALLOWED], true, "block-and-log").await;
    let t = std::time::Instant::now();
    let n = 20;
    for _ in 0..n {
        let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
        let (st, _) = send(&mut c, get("/", Some(ALLOWED), &bearer()))
            .await
            .unwrap();
        assert_eq!(st, 200);
    }
    let per_conn = t.elapsed() / n;
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
    let t = std::time::Instant::now();
    let k = 200;
    for _ in 0..k {
        let (st, _) = send(&mut c, get("/", Some(ALLOWED), &bearer()))
            .await
            .unwrap();
        assert_eq!(st, 200);
    }
    let per_req = t.elapsed() / k;
    let mut body = "x".repeat(8 * 1024 * 1024);
    body.insert_str(4 * 1024 * 1024, PLACEHOLDER);
    let t = std::time::Instant::now();
    let (st, _) = send(&mut c, post("/big", Some(ALLOWED), &body))
        .await
        .unwrap();
    assert_eq!(st, 200);
    let big = t.elapsed();
    let seen = s.up.seen.lock().unwrap().clone();
    let last = seen.last().unwrap();
    assert_eq!(
        last.body.len(),
        body.len() - PLACEHOLDER.len() + VALUE.len()
    );
    drop(c);
    // Resident memory per idle intercepted connection (both TLS sessions, hyper on both
    // sides, the upstream's own state included: an upper bound).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
        let (st, _) = send(&mut c, get("/", Some(ALLOWED), &bearer()))
            .await
            .unwrap();
        assert_eq!(st, 200);
        idle.push(c);
    }
    let per_idle = (rss_kib().saturating_sub(before)) / 200;
    println!(
        "tls figures: new connection + request {per_conn:?}; keep-alive request {per_req:?}; 8 MiB CL body substituted {big:?}; ~{per_idle} KiB RSS per idle connection"
    );
}

/// A TLS 1.2-only guest is intercepted too; a request head over 64 KiB is refused before
/// anything reaches the upstream.
#[tokio::test]
async fn tls12_guest_and_head_limit() {
    let s = setup("", &[ALLOWED], true, "block-and-log").await;
    let g = flow(&s, &[ALLOWED]).await;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots(&s.ic.ca_cert_pem()))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(ALLOWED).unwrap(), g)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut c = http_client(tls).await;
    let (st, _) = send(&mut c, get("/12", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 200);
    let mut big = get("/big-head", Some(ALLOWED), &bearer());
    big.headers_mut()
        .insert("x-big", "a".repeat(70 * 1024).parse().unwrap());
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"http/1.1"]).await;
    let r = send(&mut c, big).await;
    assert!(matches!(r, None | Some((431, _))), "{r:?}");
    let mut big = get(&format!("https://{ALLOWED}/big-h2"), None, &bearer());
    big.headers_mut()
        .insert("x-big", "a".repeat(70 * 1024).parse().unwrap());
    let mut c = client(&s, ALLOWED, &[ALLOWED], &[b"h2"]).await;
    let r = send(&mut c, big).await;
    assert!(matches!(r, None | Some((431, _))), "{r:?}");
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {VALUE}")
    );
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}
