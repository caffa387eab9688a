//! Hostile wire input against the TLS interception data path (docs: SECRETS.md, "Bad
//! inputs to try" → "Wire"). Same harness as tls_intercept.rs: the "guest" is a client on
//! one end of a tokio duplex whose other end runs `Interceptor::intercept`; the upstream
//! is a local rustls+hyper server on 127.0.0.1 (or a raw TCP recorder for spliced flows)
//! that records what it received. Every test asserts on what the upstream really got, and
//! that the flow's task ends (never panics, never hangs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
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
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

const PH: &str = "$MSB_API_KEY";
const ALLOWED: &str = "api.allowed.test";
const OTHER: &str = "other.test";
/// Deadline for a flow's task to end once the guest is gone (well below the
/// interceptor's 30 s idle / 10 s handshake timeouts, so a hang is caught).
const FLOW_END: Duration = Duration::from_secs(8);

fn rand_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

fn tmpdir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "msb-tlsbad-{tag}-{}-{}",
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

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    handshakes: Arc<AtomicUsize>,
}

/// A TLS server on 127.0.0.1 offering `alpn` (h2 served when chosen, HTTP/1.1 otherwise)
/// that records every request. `/echo…` answers with everything it received (an
/// echoing server); any `Upgrade` request gets a 101 and an echo splice (a permissive
/// upstream: the interceptor must not rely on the upstream refusing).
async fn upstream(pki: &UpstreamPki, alpn: &[&[u8]]) -> Upstream {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
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
                        let rec = Seen {
                            uri: parts.uri.to_string(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                                .collect(),
                            body,
                        };
                        let echo = parts.uri.path().starts_with("/echo");
                        let echoed = rec.all();
                        let auth = rec.header("authorization").unwrap_or_default();
                        seen.lock().unwrap().push(rec);
                        if upgrade {
                            let r = Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "echo")
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            return Ok::<_, std::convert::Infallible>(r);
                        }
                        if echo {
                            let r = Response::builder()
                                .header("x-echo-authorization", auth)
                                .body(Full::new(Bytes::from(echoed)))
                                .unwrap();
                            return Ok(r);
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
    value: String,
}

impl Setup {
    fn seen(&self) -> Vec<Seen> {
        self.up.seen.lock().unwrap().clone()
    }
    fn ca(&self) -> String {
        self.ic.ca_cert_pem()
    }
}

struct Opts {
    /// ALPN the upstream offers.
    up_alpn: &'static [&'static [u8]],
    /// injection.body (and queryParams).
    body: bool,
}

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

impl Default for Opts {
    fn default() -> Self {
        Opts {
            up_alpn: BOTH,
            body: true,
        }
    }
}

/// One secret API_KEY (value `S3cr3t-<random hex>`) allowed for api.allowed.test only,
/// headers and Basic always injected, bodies and queries per `o.body`; the upstream's
/// certificate names both test hosts and is trusted.
async fn setup(o: Opts) -> Setup {
    let pki = upstream_pki(&[ALLOWED, OTHER]);
    let dir = tmpdir("setup");
    let ca_path = dir.join("upstream-ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    let value = format!("S3cr3t-{}", rand_hex());
    let json = format!(
        r#"{{"guestMac":"02:00:00:00:00:02","guestIp":"10.0.2.15","gatewayIp":"10.0.2.2","prefixLen":24,
        "tls":{{"upstreamCaCertPaths":[{ca:?}]}},
        "secrets":[{{"envVar":"API_KEY","placeholder":"{PH}","allowedHosts":["{ALLOWED}"],
            "injection":{{"headers":true,"basicAuth":true,"queryParams":{b},"body":{b}}},
            "onViolation":{{"action":"block-and-log"}}}}]}}"#,
        ca = ca_path.to_str().unwrap(),
        b = o.body,
    );
    let cfg = NetConfig::from_json(&json).unwrap();
    let values: Vec<SecretValue> =
        serde_json::from_str(&format!(r#"[{{"envVar":"API_KEY","value":"{value}"}}]"#)).unwrap();
    let ca = CertificateAuthority::load_or_create(&dir.join("tls")).unwrap();
    let ic = Interceptor::new(&cfg, values, ca).unwrap();
    Setup {
        ic,
        up: upstream(&pki, o.up_alpn).await,
        value,
    }
}

fn roots(pem: &str) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut r = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        r.add(c.unwrap()).unwrap();
    }
    r
}

/// The flow's task must end within `d` and must not have panicked.
async fn ends(h: JoinHandle<()>, d: Duration) {
    match tokio::time::timeout(d, h).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the flow's task failed: {e}"),
        Err(_) => panic!("the flow's task did not end within {d:?}"),
    }
}

/// Start an intercepted flow to `addr`; the guest's end and the flow's task.
async fn flow_to(
    ic: &Arc<Interceptor>,
    addr: SocketAddr,
    names: &[&str],
) -> (DuplexStream, JoinHandle<()>) {
    let (guest, theirs) = tokio::io::duplex(64 * 1024);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let facts = FlowFacts {
        dst: addr,
        names: names.iter().map(|n| n.to_string()).collect(),
    };
    (
        guest,
        tokio::spawn(ic.clone().intercept(theirs, tcp, facts)),
    )
}

async fn flow(s: &Setup, names: &[&str]) -> (DuplexStream, JoinHandle<()>) {
    flow_to(&s.ic, s.up.addr, names).await
}

/// How the relay between the guest client and the interceptor treats the client's bytes.
#[derive(Clone)]
enum Relay {
    /// The first `n` bytes one per write, with a flush and a yield after each.
    Trickle(usize),
    /// The first TLS record (the ClientHello) re-framed: its handshake payload cut at
    /// these offsets into several records of the same type and version.
    Reframe(Vec<usize>),
}

/// Like [`flow`], with a relay in between that records every byte the client sent
/// (`tap`) and reshapes the first flight as `mode` says.
async fn relayed_flow(
    s: &Setup,
    names: &[&str],
    mode: Relay,
) -> (DuplexStream, JoinHandle<()>, Arc<Mutex<Vec<u8>>>) {
    let (client, relay_a) = tokio::io::duplex(64 * 1024);
    let (relay_b, task) = flow(s, names).await;
    let tap: Arc<Mutex<Vec<u8>>> = Arc::default();
    let (mut ar, mut aw) = tokio::io::split(relay_a);
    let (mut br, mut bw) = tokio::io::split(relay_b);
    let t2 = tap.clone();
    tokio::spawn(async move {
        let mut sent = 0usize;
        let mut first: Vec<u8> = Vec::new();
        let mut reframed = false;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match ar.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            t2.lock().unwrap().extend_from_slice(chunk);
            let ok = match &mode {
                Relay::Trickle(limit) => {
                    let k = limit.saturating_sub(sent).min(chunk.len());
                    let mut ok = true;
                    for &b in &chunk[..k] {
                        ok &= bw.write_all(&[b]).await.is_ok() && bw.flush().await.is_ok();
                        tokio::task::yield_now().await;
                    }
                    sent += chunk.len();
                    ok && bw.write_all(&chunk[k..]).await.is_ok()
                }
                Relay::Reframe(_) if reframed => bw.write_all(chunk).await.is_ok(),
                Relay::Reframe(cuts) => {
                    first.extend_from_slice(chunk);
                    let len = (first.len() >= 5)
                        .then(|| u16::from_be_bytes([first[3], first[4]]) as usize);
                    match len {
                        Some(len) if first.len() >= 5 + len => {
                            reframed = true;
                            let payload = &first[5..5 + len];
                            let mut out = Vec::new();
                            let mut at = 0;
                            for &c in cuts.iter().chain(std::iter::once(&len)) {
                                let c = c.min(len);
                                if c <= at {
                                    continue;
                                }
                                out.extend_from_slice(&first[..3]);
                                out.extend_from_slice(&((c - at) as u16).to_be_bytes());
                                out.extend_from_slice(&payload[at..c]);
                                at = c;
                            }
                            out.extend_from_slice(&first[5 + len..]);
                            bw.write_all(&out).await.is_ok()
                        }
                        _ => true,
                    }
                }
            };
            if !ok {
                break;
            }
        }
        let _ = bw.shutdown().await;
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut br, &mut aw).await;
        let _ = aw.shutdown().await;
    });
    (client, task, tap)
}

/// How many TLS records of type handshake (22) start `bytes` (the ClientHello's records;
/// TLS 1.3 sends a ChangeCipherSpec or encrypted records next).
fn leading_handshake_records(bytes: &[u8]) -> usize {
    let (mut n, mut at) = (0, 0);
    while at + 5 <= bytes.len() && bytes[at] == 22 {
        n += 1;
        at += 5 + u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]) as usize;
    }
    n
}

const ALL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn client_cfg(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

async fn connect(
    cfg: rustls::ClientConfig,
    io: DuplexStream,
    sni: &str,
) -> std::io::Result<TlsStream<DuplexStream>> {
    let c = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from(sni.to_string()).unwrap();
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

/// Send a request; (status, body), or None when the connection failed.
async fn send(s: &mut Sender, req: Request<Full<Bytes>>) -> Option<(u16, String)> {
    let fut = async {
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
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("a request must not hang")
}

fn get(uri: &str, host: Option<&str>, auth: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri(uri).header("authorization", auth);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn bearer() -> String {
    format!("Bearer {PH}")
}

/// An intercepted HTTP client (guest ALPN `alpn`) and the flow's task.
async fn client(s: &Setup, sni: &str, names: &[&str], alpn: &[&[u8]]) -> (Sender, JoinHandle<()>) {
    let (g, task) = flow(s, names).await;
    let tls = connect(client_cfg(&s.ca(), alpn, ALL_VERSIONS), g, sni)
        .await
        .expect("guest handshake");
    (http_client(tls).await, task)
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// One HTTP/1 response from the front of `buf` (Content-Length framed, as every answer
/// here is): the bytes it took and the response.
fn parse_resp(buf: &[u8]) -> Option<(usize, Resp)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let cl = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let cl = if status == 101 { 0 } else { cl };
    if buf.len() < end + cl {
        return None;
    }
    Some((
        end + cl,
        Resp {
            status,
            head,
            body: buf[end..end + cl].to_vec(),
        },
    ))
}

/// Read the next response (None: the connection closed first). Panics after 20 s: a
/// refusal must never be a hang.
async fn read_resp<R: tokio::io::AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Option<Resp> {
    let fut = async {
        loop {
            if let Some((n, resp)) = parse_resp(buf) {
                buf.drain(..n);
                return Some(resp);
            }
            let mut chunk = vec![0u8; 16 * 1024];
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("no answer and no close within 20 s")
}

/// Write `req` raw on a fresh intercepted HTTP/1.1 connection (SNI `sni`, DNS-pinned for
/// `names`); the first response, then the connection must close or stay usable: the
/// stream is dropped and the flow's task must end.
async fn h1_raw(s: &Setup, sni: &str, names: &[&str], req: &[u8]) -> Option<Resp> {
    let (g, task) = flow(s, names).await;
    let mut tls = connect(client_cfg(&s.ca(), &[b"http/1.1"], ALL_VERSIONS), g, sni)
        .await
        .expect("guest handshake");
    tls.write_all(req).await.unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut tls, &mut buf).await;
    drop(tls);
    ends(task, FLOW_END).await;
    r
}

/// A plain TCP upstream for spliced flows: records every byte until EOF (then closes),
/// answering `reply` once it has seen a request head.
async fn raw_upstream(reply: Option<&'static [u8]>) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let (mut t, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut replied = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match t.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if let Some(r) = reply.filter(|_| !replied) {
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    replied = true;
                    let _ = t.write_all(r).await;
                }
            }
        }
    });
    (addr, h)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

// 1. ----------------------------------------------------------------------------------

/// A ClientHello that arrives one byte per write (flush and yield after each) is still
/// read whole, intercepted and substituted.
#[tokio::test]
async fn client_hello_one_byte_per_write() {
    let s = setup(Opts::default()).await;
    let (g, task, tap) = relayed_flow(&s, &[ALLOWED], Relay::Trickle(4096)).await;
    let tls = connect(
        client_cfg(&s.ca(), &[b"http/1.1"], ALL_VERSIONS),
        g,
        ALLOWED,
    )
    .await
    .expect("guest handshake through a 1-byte-per-write relay");
    let mut c = http_client(tls).await;
    let (st, _) = send(&mut c, get("/one-byte", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(
        tap.lock().unwrap()[0],
        22,
        "the first flight is a handshake record"
    );
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/one-byte");
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {}", s.value)
    );
    drop(c);
    ends(task, FLOW_END).await;
}

// 2. ----------------------------------------------------------------------------------

/// A ClientHello over several TLS records: rustls' own fragmentation (max_fragment_size
/// 64) and a hand re-framing whose first record carries only 2 bytes of the 4-byte
/// handshake header. Both are intercepted and substituted.
#[tokio::test]
async fn client_hello_over_several_records() {
    let s = setup(Opts::default()).await;
    // (a) rustls fragments its own ClientHello.
    let (g, task, tap) = relayed_flow(&s, &[ALLOWED], Relay::Trickle(0)).await;
    let mut cfg = client_cfg(&s.ca(), &[b"http/1.1"], ALL_VERSIONS);
    cfg.max_fragment_size = Some(64);
    let tls = connect(cfg, g, ALLOWED).await.expect("fragmented hello");
    let mut c = http_client(tls).await;
    let (st, _) = send(&mut c, get("/frag", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 200);
    let records = leading_handshake_records(&tap.lock().unwrap());
    assert!(records >= 3, "ClientHello in {records} records");
    drop(c);
    ends(task, FLOW_END).await;
    // (b) The client's one record re-framed into three, cut inside the handshake header.
    let (g, task, tap) = relayed_flow(&s, &[ALLOWED], Relay::Reframe(vec![2, 60])).await;
    let tls = connect(
        client_cfg(&s.ca(), &[b"http/1.1"], ALL_VERSIONS),
        g,
        ALLOWED,
    )
    .await
    .expect("re-framed hello");
    assert_eq!(leading_handshake_records(&tap.lock().unwrap()), 1);
    let mut c = http_client(tls).await;
    let (st, _) = send(&mut c, get("/reframed", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 200);
    drop(c);
    ends(task, FLOW_END).await;
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    for (r, uri) in seen.iter().zip(["/frag", "/reframed"]) {
        assert_eq!(r.uri, uri);
        assert_eq!(
            r.header("authorization").unwrap(),
            format!("Bearer {}", s.value)
        );
    }
}

// 3. ----------------------------------------------------------------------------------

/// ClientHellos of ~12 KiB (one record) and ~40 KiB (rustls splits it over three
/// records) made large by ALPN entries: intercepted; only http/1.1 of the offered list is
/// passed upstream, and the request is substituted.
#[tokio::test]
async fn large_client_hello_works() {
    let s = setup(Opts::default()).await;
    for (n, uri) in [(50usize, "/big-12k"), (170, "/big-40k")] {
        let junk: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("x-junk-{i:04}-{}", "j".repeat(228)).into_bytes())
            .collect();
        let mut alpn: Vec<&[u8]> = junk.iter().map(|j| j.as_slice()).collect();
        alpn.push(b"http/1.1");
        let (g, task, tap) = relayed_flow(&s, &[ALLOWED], Relay::Trickle(0)).await;
        let tls = connect(client_cfg(&s.ca(), &alpn, ALL_VERSIONS), g, ALLOWED)
            .await
            .expect("large hello");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let hello_len = {
            let t = tap.lock().unwrap();
            let mut at = 0;
            for _ in 0..leading_handshake_records(&t) {
                at += 5 + u16::from_be_bytes([t[at + 3], t[at + 4]]) as usize;
            }
            at
        };
        assert!(hello_len > n * 240, "ClientHello {hello_len} bytes");
        let mut c = http_client(tls).await;
        let (st, _) = send(&mut c, get(uri, Some(ALLOWED), &bearer()))
            .await
            .unwrap();
        assert_eq!(st, 200);
        drop(c);
        ends(task, FLOW_END).await;
    }
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(
            r.header("authorization").unwrap(),
            format!("Bearer {}", s.value)
        );
    }
}

/// Over the cap: a record header announcing 64 KiB followed by 70 KiB of garbage, and
/// well-framed 16 KiB records carrying a 64 KiB "ClientHello" (the sniffer's 64 KiB cap
/// trips before rustls could parse it). Neither is TLS the interceptor can read, so the
/// flow is spliced raw (as any non-TLS stream): the upstream gets exactly the bytes sent
/// (the placeholder in them literally, never the value), and the flow closes when the
/// upstream does. No panic.
#[tokio::test]
async fn oversized_client_hello_is_spliced_and_closed() {
    let s = setup(Opts::default()).await;
    let filler = |n: usize| -> Vec<u8> {
        let unit = format!("garbage {PH} ");
        unit.as_bytes().iter().copied().cycle().take(n).collect()
    };
    let mut v1 = vec![22, 3, 1, 0xff, 0xff];
    v1.extend(filler(70 * 1024));
    let mut v2 = Vec::new();
    for i in 0..5 {
        v2.extend_from_slice(&[22, 3, 1, 0x40, 0x00]);
        let mut payload = filler(16 * 1024);
        if i == 0 {
            payload[..4].copy_from_slice(&[1, 0x00, 0xff, 0xff]);
        }
        v2.extend(payload);
    }
    for bytes in [v1, v2] {
        let (addr, got) = raw_upstream(None).await;
        let (g, task) = flow_to(&s.ic, addr, &[ALLOWED]).await;
        let (mut r, mut w) = tokio::io::split(g);
        let sent = bytes.clone();
        let writer = tokio::spawn(async move {
            let _ = w.write_all(&sent).await;
            let _ = w.shutdown().await;
        });
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
            .await
            .expect("the guest connection must close")
            .unwrap();
        assert!(back.is_empty(), "nothing is answered to garbage");
        writer.await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), got)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), bytes.len());
        assert!(got == bytes, "the upstream gets the bytes unchanged");
        assert!(!contains(&got, &s.value));
        drop(r);
        ends(task, FLOW_END).await;
    }
}

// 4. ----------------------------------------------------------------------------------

/// A client that connects and sends nothing: the flow ends after the 10 s ClientHello
/// timeout (not exposed, so this waits in real time), the upstream connection is closed
/// without a byte, and the guest sees its connection closed.
#[tokio::test]
async fn silent_client_times_out() {
    let s = setup(Opts::default()).await;
    let (addr, got) = raw_upstream(None).await;
    let t = std::time::Instant::now();
    let (mut g, task) = flow_to(&s.ic, addr, &[ALLOWED]).await;
    ends(task, Duration::from_secs(14)).await;
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(9500), "ended after {took:?}");
    let got = tokio::time::timeout(Duration::from_secs(5), got)
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_empty());
    let mut b = [0u8; 1];
    assert_eq!(g.read(&mut b).await.unwrap(), 0, "guest sees EOF");
}

// 5. ----------------------------------------------------------------------------------

/// Plain HTTP on the intercepted port: spliced raw, byte for byte, so the upstream sees
/// the literal placeholder (never the value) even for the allowed, pinned host.
#[tokio::test]
async fn plain_http_is_spliced_with_literal_placeholder() {
    let s = setup(Opts::default()).await;
    let (addr, got) = raw_upstream(Some(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
    let (mut g, task) = flow_to(&s.ic, addr, &[ALLOWED]).await;
    let req = format!(
        "GET /plain?k={PH} HTTP/1.1\r\nHost: {ALLOWED}\r\nAuthorization: Bearer {PH}\r\n\r\n"
    );
    g.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut g, &mut buf)
        .await
        .expect("the upstream's answer");
    assert_eq!(r.status, 204);
    drop(g);
    ends(task, FLOW_END).await;
    let got = got.await.unwrap();
    assert_eq!(got, req.as_bytes());
    assert!(contains(&got, PH) && !contains(&got, &s.value));
}

// 6. ----------------------------------------------------------------------------------

/// TLS 1.3-only and TLS 1.2-only guests are both intercepted and substituted.
#[tokio::test]
async fn tls13_only_and_tls12_only_guests() {
    let s = setup(Opts::default()).await;
    let cases: [(&[&rustls::SupportedProtocolVersion], _, _); 2] = [
        (
            &[&rustls::version::TLS13],
            rustls::ProtocolVersion::TLSv1_3,
            "/v13",
        ),
        (
            &[&rustls::version::TLS12],
            rustls::ProtocolVersion::TLSv1_2,
            "/v12",
        ),
    ];
    for (versions, want, uri) in cases {
        let (g, task) = flow(&s, &[ALLOWED]).await;
        let tls = connect(client_cfg(&s.ca(), &[b"http/1.1"], versions), g, ALLOWED)
            .await
            .expect("guest handshake");
        assert_eq!(tls.get_ref().1.protocol_version(), Some(want));
        let mut c = http_client(tls).await;
        let (st, _) = send(&mut c, get(uri, Some(ALLOWED), &bearer()))
            .await
            .unwrap();
        assert_eq!(st, 200);
        drop(c);
        ends(task, FLOW_END).await;
    }
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(
            r.header("authorization").unwrap(),
            format!("Bearer {}", s.value)
        );
    }
}

/// The guest offers ALPN h2 only. An upstream that speaks only http/1.1 (and says so in
/// ALPN) refuses the upstream handshake: the guest's handshake fails cleanly, nothing is
/// sent. An upstream without ALPN: no protocol is negotiated with the guest either; a
/// guest that then speaks h2 anyway (prior knowledge) is refused by the HTTP/1 server
/// without anything reaching the upstream, and one that falls back to HTTP/1.1 is
/// substituted.
#[tokio::test]
async fn h2_only_guest_against_h1_upstream() {
    let s = setup(Opts {
        up_alpn: &[b"http/1.1"],
        ..Opts::default()
    })
    .await;
    let (g, task) = flow(&s, &[ALLOWED]).await;
    let r = connect(client_cfg(&s.ca(), &[b"h2"], ALL_VERSIONS), g, ALLOWED).await;
    assert!(
        r.is_err(),
        "no common protocol upstream: the guest handshake fails"
    );
    ends(task, FLOW_END).await;
    assert_eq!(s.up.handshakes.load(Ordering::Relaxed), 0);
    assert!(s.seen().is_empty());

    let s = setup(Opts {
        up_alpn: &[],
        ..Opts::default()
    })
    .await;
    // h2 prior knowledge over a connection that negotiated no ALPN.
    let (g, task) = flow(&s, &[ALLOWED]).await;
    let tls = connect(client_cfg(&s.ca(), &[b"h2"], ALL_VERSIONS), g, ALLOWED)
        .await
        .expect("guest handshake without ALPN");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let io = TokioIo::new(tls);
    let (sr, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut c = Sender::H2(sr);
    let r = send(
        &mut c,
        get(&format!("https://{ALLOWED}/pk"), None, &bearer()),
    )
    .await;
    assert!(r.is_none(), "h2 prior knowledge to an HTTP/1 flow: {r:?}");
    drop(c);
    ends(task, FLOW_END).await;
    assert!(s.seen().is_empty());
    // The same guest falling back to HTTP/1.1.
    let (g, task) = flow(&s, &[ALLOWED]).await;
    let tls = connect(client_cfg(&s.ca(), &[b"h2"], ALL_VERSIONS), g, ALLOWED)
        .await
        .unwrap();
    let mut c = http_client(tls).await;
    let (st, _) = send(&mut c, get("/h1-fallback", Some(ALLOWED), &bearer()))
        .await
        .unwrap();
    assert_eq!(st, 200);
    drop(c);
    ends(task, FLOW_END).await;
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {}", s.value)
    );
}

// 7. ----------------------------------------------------------------------------------

/// Duplicate Host (equal or not) and an absolute-form target naming another host: the
/// authority gate fails, the placeholder is a violation, 403, the upstream gets nothing.
/// An absolute-form target naming the SNI is substituted.
#[tokio::test]
async fn h1_duplicate_host_and_absolute_form() {
    let s = setup(Opts::default()).await;
    let auth = format!("Authorization: Bearer {PH}\r\n");
    for req in [
        format!("GET /dup HTTP/1.1\r\nHost: {ALLOWED}\r\nHost: {ALLOWED}\r\n{auth}\r\n"),
        format!("GET /dup2 HTTP/1.1\r\nHost: {ALLOWED}\r\nHost: {OTHER}\r\n{auth}\r\n"),
        format!("GET https://{OTHER}/abs HTTP/1.1\r\nHost: {ALLOWED}\r\n{auth}\r\n"),
        format!("GET https://{OTHER}:443/abs HTTP/1.1\r\nHost: {ALLOWED}\r\n{auth}\r\n"),
    ] {
        let r = h1_raw(&s, ALLOWED, &[ALLOWED], req.as_bytes()).await;
        let r = r.expect("an answer");
        assert_eq!(r.status, 403, "{req}: {}", r.head);
        assert!(!contains(&r.body, &s.value));
    }
    assert!(s.seen().is_empty(), "{:?}", s.seen());
    let req = format!("GET https://{ALLOWED}/abs-ok HTTP/1.1\r\nHost: {ALLOWED}\r\n{auth}\r\n");
    let r = h1_raw(&s, ALLOWED, &[ALLOWED], req.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].uri.ends_with("/abs-ok"), "{}", seen[0].uri);
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {}", s.value)
    );
}

/// Content-Length together with Transfer-Encoding. hyper's HTTP/1 parser resolves it
/// itself before the interceptor sees the request: Transfer-Encoding wins, the
/// Content-Length header is dropped and the connection is marked close (RFC 9112 §6.1).
/// So the interceptor's own "CL with TE → 400" check never fires for HTTP/1; what matters
/// holds: the upstream gets one re-framed (chunked) request without Content-Length, the
/// bytes smuggled after the body are never parsed as a second request, and the
/// connection closes after the answer.
#[tokio::test]
async fn h1_content_length_with_transfer_encoding() {
    let s = setup(Opts::default()).await;
    let chunk = format!("k={PH}");
    let req = format!(
        "POST /clte HTTP/1.1\r\nHost: {ALLOWED}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {ALLOWED}\r\nAuthorization: Bearer {PH}\r\n\r\n",
        chunk.len()
    );
    let (g, task) = flow(&s, &[ALLOWED]).await;
    let mut tls = connect(
        client_cfg(&s.ca(), &[b"http/1.1"], ALL_VERSIONS),
        g,
        ALLOWED,
    )
    .await
    .unwrap();
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut tls, &mut buf).await.expect("an answer");
    let next = read_resp(&mut tls, &mut buf).await;
    assert!(
        next.is_none(),
        "the connection closes after one answer: {next:?}"
    );
    drop(tls);
    ends(task, FLOW_END).await;
    let seen = s.seen();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].uri, "/clte");
    assert_eq!(seen[0].header("content-length"), None);
    assert_eq!(
        String::from_utf8_lossy(&seen[0].body),
        format!("k={}", s.value)
    );
}

/// `Transfer-Encoding: gzip, chunked`: the body is not the identity representation, so
/// (as for a Content-Encoding) it is passed on without substitution. (Found here: it was
/// substituted as if identity; fixed in tls/http.rs.)
#[tokio::test]
async fn h1_transfer_encoding_gzip_chunked() {
    let s = setup(Opts::default()).await;
    let chunk = format!("k={PH}");
    let req = format!(
        "POST /te HTTP/1.1\r\nHost: {ALLOWED}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let r = h1_raw(&s, ALLOWED, &[ALLOWED], req.as_bytes())
        .await
        .unwrap();
    let seen = s.seen();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("transfer-encoding").unwrap(),
        "gzip, chunked"
    );
    assert_eq!(String::from_utf8_lossy(&seen[0].body), chunk);
    assert!(!seen[0].all().contains(&s.value));
}

/// `Upgrade: h2c` over TLS (RFC 9113 §3.2: not defined over TLS) to an upstream that
/// would switch to anything: no upgrade happens (the guest gets the upstream's normal
/// answer, the upstream never saw the Upgrade), and the placeholder went through the
/// gates: substituted for the allowed host, a 403 for another. (Found here: the offer was
/// forwarded and the 101 spliced; fixed in tls/http.rs by dropping the h2c offer.)
#[tokio::test]
async fn h1_upgrade_h2c_is_not_performed() {
    let s = setup(Opts::default()).await;
    let h2c = |host: &str| {
        format!(
            "GET /h2c HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nAuthorization: Bearer {PH}\r\n\r\n"
        )
    };
    let r = h1_raw(&s, OTHER, &[OTHER], h2c(OTHER).as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert!(s.seen().is_empty());
    let r = h1_raw(&s, ALLOWED, &[ALLOWED], h2c(ALLOWED).as_bytes())
        .await
        .unwrap();
    assert_ne!(r.status, 101, "no h2c upgrade: {}", r.head);
    let seen = s.seen();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("upgrade"), None);
    assert_eq!(seen[0].header("http2-settings"), None);
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {}", s.value)
    );
}

// 8. ----------------------------------------------------------------------------------

/// 1024 pipelined requests written at once, each with the placeholder in a header: all
/// answered in order within a deadline, each substituted, in order upstream.
#[tokio::test]
async fn pipelined_1024_requests() {
    let s = setup(Opts::default()).await;
    const N: usize = 1024;
    let (g, task) = flow(&s, &[ALLOWED]).await;
    let tls = connect(
        client_cfg(&s.ca(), &[b"http/1.1"], ALL_VERSIONS),
        g,
        ALLOWED,
    )
    .await
    .unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let mut all = Vec::new();
    for i in 0..N {
        all.extend_from_slice(
            format!("GET /p/{i} HTTP/1.1\r\nHost: {ALLOWED}\r\nX-Key: {PH}-{i}\r\n\r\n").as_bytes(),
        );
    }
    let writer = tokio::spawn(async move {
        w.write_all(&all).await.unwrap();
        // Flush: tokio-rustls may hold the tail of the write in its buffer otherwise.
        w.flush().await.unwrap();
        w
    });
    let t = std::time::Instant::now();
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while statuses.len() < N {
            let next = tokio::time::timeout(Duration::from_secs(15), read_resp(&mut r, &mut buf));
            match next.await {
                Ok(Some(resp)) => statuses.push(resp.status),
                Ok(None) => break,
                Err(_) => panic!(
                    "stalled after {} answers, upstream saw {}",
                    statuses.len(),
                    s.seen().len()
                ),
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "{} of {N} answers within 60 s",
        statuses.len()
    );
    assert_eq!(statuses.len(), N);
    assert!(statuses.iter().all(|&st| st == 200));
    eprintln!("{N} pipelined requests answered in {:?}", t.elapsed());
    let w = writer.await.unwrap();
    drop((r, w));
    ends(task, FLOW_END).await;
    let seen = s.seen();
    assert_eq!(seen.len(), N);
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.uri, format!("/p/{i}"));
        assert_eq!(r.header("x-key").unwrap(), format!("{}-{i}", s.value));
    }
}

// 9. ----------------------------------------------------------------------------------

/// An upstream that echoes the request back. KNOWN LIMITATION: responses are not
/// rewritten (no redaction of the value back to the placeholder yet, SECRETS.md
/// decision 5, phase 2), so the guest reads the real value in the echoed body and
/// header. This asserts today's behaviour; flip it when response redaction lands.
#[tokio::test]
async fn echoing_upstream_returns_value_to_guest() {
    let s = setup(Opts::default()).await;
    let (g, task) = flow(&s, &[ALLOWED]).await;
    let mut tls = connect(
        client_cfg(&s.ca(), &[b"http/1.1"], ALL_VERSIONS),
        g,
        ALLOWED,
    )
    .await
    .unwrap();
    let req =
        format!("GET /echo HTTP/1.1\r\nHost: {ALLOWED}\r\nAuthorization: Bearer {PH}\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut tls, &mut buf).await.unwrap();
    assert_eq!(r.status, 200);
    // Known limitation: the value comes back to the guest.
    assert!(contains(
        &r.body,
        &format!("authorization: Bearer {}", s.value)
    ));
    assert!(r
        .head
        .contains(&format!("x-echo-authorization: Bearer {}", s.value)));
    assert!(!contains(&r.body, PH));
    drop(tls);
    ends(task, FLOW_END).await;
}

// 10. ---------------------------------------------------------------------------------

/// The secret is not allowed for other.test (pinned, verified, Host = SNI: only the
/// allow-list fails), bodies are not injected, so every scope is scanned for it, decoded
/// forms too: a placeholder in a header name, percent-encoded in the path or the query,
/// JSON-escaped in a Content-Length body, inside Proxy-Authorization: Basic. Each is a
/// 403 and the upstream receives nothing. A request without it goes through. (Found here:
/// `X-$MSB_API_KEY` passed, as header names reach the engine lower-cased; fixed in
/// tls/substitute.rs.)
#[tokio::test]
async fn encoded_placeholders_to_other_host_blocked() {
    let s = setup(Opts {
        body: false,
        ..Opts::default()
    })
    .await;
    let json = r#"{"k":"\u0024MSB_API_KEY"}"#;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{PH}"));
    let h = format!("Host: {OTHER}\r\n");
    let cases = [
        ("header name", format!("GET /n HTTP/1.1\r\n{h}X-{PH}: 1\r\n\r\n")),
        ("percent path", format!("GET /p/%24MSB_API_KEY HTTP/1.1\r\n{h}\r\n")),
        ("percent path lower", format!("GET /p/%24MSB%5fAPI%5fKEY HTTP/1.1\r\n{h}\r\n")),
        ("percent query", format!("GET /q?k=%24MSB_API_KEY HTTP/1.1\r\n{h}\r\n")),
        (
            "json body",
            format!(
                "POST /j HTTP/1.1\r\n{h}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                json.len()
            ),
        ),
        (
            "proxy basic",
            format!("GET /b HTTP/1.1\r\n{h}Proxy-Authorization: Basic {basic}\r\n\r\n"),
        ),
    ];
    for (what, req) in &cases {
        let r = h1_raw(&s, OTHER, &[OTHER], req.as_bytes()).await;
        let r = r.unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(r.status, 403, "{what}: {}", r.head);
        assert!(
            String::from_utf8_lossy(&r.body).contains("API_KEY"),
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(s.seen().is_empty(), "{what}: upstream got {:?}", s.seen());
    }
    let r = h1_raw(
        &s,
        OTHER,
        &[OTHER],
        format!("GET /clean HTTP/1.1\r\n{h}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/clean");
}

/// A JSON-escaped placeholder in a chunked body (streamed), split across chunks: the
/// violation is found as it streams; the upstream may have got the head, but never the
/// placeholder in any form, and the guest gets a 403 or a close.
#[tokio::test]
async fn json_escaped_placeholder_in_chunked_body_blocked() {
    let s = setup(Opts {
        body: false,
        ..Opts::default()
    })
    .await;
    let body = r#"{"k":"\u0024MSB_API_KEY"}"#;
    let (a, b) = body.split_at(9);
    let req = format!(
        "POST /jc HTTP/1.1\r\nHost: {OTHER}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let r = h1_raw(&s, OTHER, &[OTHER], req.as_bytes()).await;
    assert!(matches!(&r, None | Some(Resp { status: 403, .. })), "{r:?}");
    for r in s.seen() {
        assert!(!r.all().contains("MSB_API_KEY"), "{r:?}");
        assert!(!r.all().contains(&s.value));
    }
}

// 11. ---------------------------------------------------------------------------------

/// HTTP/2: a header block over the 64 KiB limit (many headers) is refused (431 or a
/// reset); `:authority` other than the SNI, or a Host header other than it, is a 403.
/// The upstream receives nothing.
#[tokio::test]
async fn h2_header_limit_and_authority() {
    let s = setup(Opts::default()).await;
    let (mut c, task) = client(&s, ALLOWED, &[ALLOWED], &[b"h2"]).await;
    let mut big = get(&format!("https://{ALLOWED}/big"), None, &bearer());
    for i in 0..80 {
        big.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(format!("x-h-{i}").as_bytes()).unwrap(),
            "v".repeat(1000).parse().unwrap(),
        );
    }
    let r = send(&mut c, big).await;
    assert!(matches!(r, None | Some((431, _))), "{r:?}");
    drop(c);
    ends(task, FLOW_END).await;
    for (uri, host) in [
        (format!("https://{OTHER}/a"), None),
        (format!("https://{ALLOWED}/b"), Some(OTHER)),
    ] {
        let (mut c, task) = client(&s, ALLOWED, &[ALLOWED], &[b"h2"]).await;
        let r = send(&mut c, get(&uri, host, &bearer())).await;
        assert!(matches!(r, Some((403, _))), "{uri} {host:?}: {r:?}");
        drop(c);
        ends(task, FLOW_END).await;
    }
    assert!(s.seen().is_empty(), "{:?}", s.seen());
}

fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal header field without indexing, name from the static table.
fn hpack_lit(out: &mut Vec<u8>, index: usize, value: &str) {
    if index < 15 {
        out.push(index as u8);
    } else {
        out.push(0x0f);
        out.push((index - 15) as u8);
    }
    assert!(value.len() < 127);
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// 150 HTTP/2 streams opened at once by a raw client that ignores the advertised
/// SETTINGS_MAX_CONCURRENT_STREAMS (100): the excess is refused stream by stream
/// (RST_STREAM), the rest answered and substituted; no stream is left hanging.
#[tokio::test]
async fn h2_too_many_concurrent_streams() {
    let s = setup(Opts::default()).await;
    const N: u32 = 150;
    let (g, task) = flow(&s, &[ALLOWED]).await;
    let mut tls = connect(client_cfg(&s.ca(), &[b"h2"], ALL_VERSIONS), g, ALLOWED)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    tls.write_all(&out).await.unwrap();
    let auth = bearer();
    let mut burst = h2_frame(4, 1, 0, &[]); // ACK of the server's SETTINGS
    for i in 0..N {
        let mut hb = vec![0x82, 0x87]; // :method GET, :scheme https
        hpack_lit(&mut hb, 4, &format!("/s/{i}"));
        hpack_lit(&mut hb, 1, ALLOWED);
        hpack_lit(&mut hb, 23, &auth);
        burst.extend(h2_frame(1, 0x5, 2 * i + 1, &hb)); // END_STREAM | END_HEADERS
    }
    let mut answered = std::collections::BTreeSet::new();
    let mut refused = std::collections::BTreeMap::new();
    let mut buf = Vec::new();
    let mut sent_burst = false;
    let mut goaway = false;
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        while (answered.len() + refused.len()) < N as usize && !goaway {
            while buf.len() >= 9 && (answered.len() + refused.len()) < N as usize {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (ty, flags) = (buf[3], buf[4]);
                let sid = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                match ty {
                    1 => {
                        answered.insert(sid);
                    }
                    3 => {
                        refused.insert(sid, u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    }
                    4 if flags & 1 == 0 && !sent_burst => {
                        sent_burst = true;
                        tls.write_all(&burst).await.unwrap();
                    }
                    6 if flags & 1 == 0 => {
                        tls.write_all(&h2_frame(6, 1, 0, &payload)).await.unwrap();
                    }
                    7 => goaway = true,
                    _ => {}
                }
            }
            if answered.len() + refused.len() == N as usize {
                break;
            }
            let mut chunk = vec![0u8; 16 * 1024];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "streams left hanging: {} answered, {} refused",
        answered.len(),
        refused.len()
    );
    eprintln!(
        "{} streams answered, {} refused",
        answered.len(),
        refused.len()
    );
    assert!(!goaway, "a stream-level refusal, not a connection error");
    assert_eq!(answered.len() + refused.len(), N as usize);
    assert!(
        answered.len() >= 100,
        "at least the advertised limit is served"
    );
    // REFUSED_STREAM (7).
    assert!(refused.values().all(|&code| code == 7), "{refused:?}");
    drop(tls);
    ends(task, FLOW_END).await;
    let seen = s.seen();
    assert_eq!(seen.len(), answered.len());
    for r in &seen {
        assert_eq!(
            r.header("authorization").unwrap(),
            format!("Bearer {}", s.value)
        );
    }
}
