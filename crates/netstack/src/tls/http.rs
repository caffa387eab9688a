//! HTTP on an intercepted flow: hyper serves the guest (HTTP/1.1 or HTTP/2, as ALPN
//! settled) and forwards each request over the one upstream connection of the same
//! version, after substitute.rs's plan for that request rewrote it or blocked it.
//!
//! Per request: the gates (SNI allowed, DNS pin, verified upstream, Host/:authority equal
//! to the SNI) give the plan; the plan rewrites header values (Basic credentials too),
//! the target, and, when a secret wants bodies, an identity-encoded body: buffered up to
//! 16 MiB when it has a Content-Length (which is then corrected), streamed otherwise
//! (chunked, HTTP/2 without a length, and scan-only above 16 MiB). A body with a
//! Content-Encoding other than identity (or a transfer coding other than chunked) is
//! passed on unchanged, neither substituted nor scanned. An `Upgrade: h2c` offer is
//! dropped (h2c is not defined over TLS). A violation answers 403 and closes the
//! connection; a violation inside a streamed body aborts the upstream request (the
//! upstream gets a truncated body without the placeholder), then answers 403 the same way.
//! Responses are passed back untouched. HTTP/1 upgrades (WebSocket) are substituted in the
//! handshake headers, then spliced.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use super::substitute::{BodyStream, Gates, Plan, Violation};
use super::Interceptor;
use crate::secrets_config::MAX_BODY_SCAN_BYTES;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HBody = BoxBody<Bytes, BoxError>;
type ResponseFuture = Pin<Box<dyn Future<Output = hyper::Result<Response<Incoming>>> + Send>>;

/// Largest request head (HTTP/1 read buffer, HTTP/2 header list).
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in an HTTP/1 request.
const MAX_H1_HEADERS: usize = 256;
/// Concurrent HTTP/2 streams per guest connection.
const MAX_H2_STREAMS: u32 = 100;
/// The guest must send a request head within this (also closes idle HTTP/1 keep-alive).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A buffered body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// The upstream must answer (status and headers) within this. Long: some APIs answer
/// only once they are done.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(900);

/// What the flow established before HTTP.
pub(super) struct FlowCtx {
    pub sni: String,
    pub dns_pinned: bool,
    pub upstream_verified: bool,
}

struct Shared {
    ic: Arc<Interceptor>,
    flow: FlowCtx,
    h2: bool,
    upstream: Upstream,
    /// Set after a violation: no more requests are forwarded, the connection closes.
    closing: AtomicBool,
    close: Notify,
    /// An HTTP/1 upgrade took over the connections (do not shut the guest side down when
    /// the upstream connection hands its stream over).
    upgraded: AtomicBool,
}

enum Upstream {
    H1(tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<HBody>>),
    H2(hyper::client::conn::http2::SendRequest<HBody>),
}

pub(super) async fn serve<G, U>(
    ic: Arc<Interceptor>,
    guest: G,
    upstream: U,
    h2: bool,
    flow: FlowCtx,
) where
    G: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let up_io = TokioIo::new(upstream);
    let (sender, client): (Upstream, Pin<Box<dyn Future<Output = ()> + Send>>) = if h2 {
        let r = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(up_io)
            .await;
        match r {
            Ok((s, c)) => (Upstream::H2(s), Box::pin(async move { drop(c.await) })),
            Err(_) => return,
        }
    } else {
        let r = hyper::client::conn::http1::Builder::new()
            .preserve_header_case(true)
            .handshake(up_io)
            .await;
        match r {
            Ok((s, c)) => (
                Upstream::H1(tokio::sync::Mutex::new(s)),
                Box::pin(async move { drop(c.with_upgrades().await) }),
            ),
            Err(_) => return,
        }
    };
    let shared = Arc::new(Shared {
        ic,
        flow,
        h2,
        upstream: sender,
        closing: AtomicBool::new(false),
        close: Notify::new(),
        upgraded: AtomicBool::new(false),
    });
    let s2 = shared.clone();
    let svc = hyper::service::service_fn(move |req| handle(s2.clone(), req));
    let guest_io = TokioIo::new(guest);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_H2_STREAMS)
            .max_header_list_size(MAX_HEAD as u32)
            .auto_date_header(false)
            .serve_connection(guest_io, svc);
        tokio::pin!(conn);
        drive(conn, |c| c.graceful_shutdown(), client, &shared).await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .preserve_header_case(true)
            .max_header_size(MAX_HEAD)
            .max_headers(MAX_H1_HEADERS)
            .header_read_timeout(HEAD_TIMEOUT)
            .auto_date_header(false)
            .serve_connection(guest_io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        drive(conn, |c| c.graceful_shutdown(), client, &shared).await;
    }
}

/// Run the guest connection to its end, the upstream connection beside it. When the
/// upstream connection ends, or after a violation, the guest connection is shut down
/// gracefully (the response in progress is finished first).
async fn drive<C: Future>(
    mut server: Pin<&mut C>,
    shutdown: impl Fn(Pin<&mut C>),
    mut client: Pin<Box<dyn Future<Output = ()> + Send>>,
    shared: &Shared,
) {
    let (mut client_done, mut shut) = (false, false);
    loop {
        tokio::select! {
            _ = server.as_mut() => return,
            _ = client.as_mut(), if !client_done => {
                client_done = true;
                if !shut && !shared.upgraded.load(Ordering::Relaxed) {
                    shut = true;
                    shutdown(server.as_mut());
                }
            }
            _ = shared.close.notified(), if !shut => {
                shut = true;
                shutdown(server.as_mut());
            }
        }
    }
}

fn text(status: StatusCode, msg: &str) -> Response<HBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Shared {
    /// Refuse the request and close the connection after the answer.
    fn refuse(&self, status: StatusCode, msg: &str) -> Response<HBody> {
        self.closing.store(true, Ordering::Relaxed);
        self.close.notify_one();
        let mut r = text(status, msg);
        if !self.h2 {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }

    fn blocked(&self, v: &Violation) -> Response<HBody> {
        self.ic.violation(v);
        self.refuse(
            StatusCode::FORBIDDEN,
            &format!("microsandbox: request blocked: {v}"),
        )
    }
}

async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Result<Response<HBody>, Infallible> {
    if sh.closing.load(Ordering::Relaxed) {
        return Ok(text(
            StatusCode::FORBIDDEN,
            "microsandbox: connection closing",
        ));
    }
    Ok(match forward(&sh, req).await {
        Ok(r) => r,
        Err(r) => r,
    })
}

/// Host part of an authority, lower case, without a trailing dot.
fn authority_host(a: &Authority) -> String {
    super::flow::normalize_name(a.host().trim_start_matches('[').trim_end_matches(']'))
}

/// HTTP/1: exactly one Host, equal to the SNI (and an absolute-form target's authority
/// too). HTTP/2: `:authority` equal to the SNI, and any Host as well.
fn authority_matches(req: &Request<Incoming>, sni: &str, h2: bool) -> bool {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    let host_ok = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|s| s.parse::<Authority>().ok())
            .is_some_and(|a| authority_host(&a) == sni)
    };
    let uri_ok = req.uri().authority().map(|a| authority_host(a) == sni);
    if h2 {
        uri_ok == Some(true) && hosts.len() <= 1 && hosts.iter().all(|v| host_ok(v))
    } else {
        hosts.len() == 1 && host_ok(hosts[0]) && uri_ok != Some(false)
    }
}

async fn forward(
    sh: &Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<HBody>, Response<HBody>> {
    if req.method() == Method::CONNECT {
        return Err(sh.refuse(
            StatusCode::NOT_IMPLEMENTED,
            "microsandbox: CONNECT is not supported here",
        ));
    }
    let h = req.headers();
    if h.contains_key(header::CONTENT_LENGTH) && h.contains_key(header::TRANSFER_ENCODING) {
        return Err(sh.refuse(
            StatusCode::BAD_REQUEST,
            "microsandbox: Content-Length with Transfer-Encoding",
        ));
    }
    let gates = Gates {
        sni: sh.flow.sni.clone(),
        dns_pinned: sh.flow.dns_pinned,
        upstream_verified: sh.flow.upstream_verified,
        authority_matches: authority_matches(&req, &sh.flow.sni, sh.h2),
        intercepted_tls: true,
    };
    let plan = sh.ic.secrets.plan(&gates);
    // h2c is not defined over TLS (RFC 9113 §3.2) and would take the connection past the
    // gates: ignore the offer, as a server must, so no upstream can switch to it.
    if !sh.h2 && has_token(req.headers(), &header::UPGRADE, b"h2c") {
        req.headers_mut().remove(header::UPGRADE);
        req.headers_mut().remove("http2-settings");
    }
    let upgrade = !sh.h2 && req.headers().contains_key(header::UPGRADE);
    let guest_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let stream_violation: Arc<Mutex<Option<Violation>>> = Arc::default();
    let req = if plan.is_noop() {
        req.map(|b| b.map_err(BoxError::from).boxed())
    } else {
        rewrite(sh, &plan, req, &stream_violation).await?
    };
    let sent = match &sh.upstream {
        Upstream::H1(s) => {
            let mut s = s.lock().await;
            if s.ready().await.is_err() {
                return Err(sh.refuse(StatusCode::BAD_GATEWAY, "microsandbox: upstream closed"));
            }
            Box::pin(s.send_request(req)) as ResponseFuture
        }
        Upstream::H2(s) => {
            let mut s = s.clone();
            if s.ready().await.is_err() {
                return Err(sh.refuse(StatusCode::BAD_GATEWAY, "microsandbox: upstream closed"));
            }
            Box::pin(s.send_request(req))
        }
    };
    let resp = tokio::time::timeout(RESPONSE_TIMEOUT, sent).await;
    if let Some(v) = stream_violation.lock().unwrap().take() {
        return Err(sh.blocked(&v));
    }
    let mut resp = match resp {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => {
            return Err(sh.refuse(
                StatusCode::BAD_GATEWAY,
                "microsandbox: upstream request failed",
            ))
        }
        Err(_) => {
            return Err(sh.refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "microsandbox: upstream timed out",
            ))
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(guest_up) = guest_upgrade {
            sh.upgraded.store(true, Ordering::Relaxed);
            let up_up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(g), Ok(u)) = tokio::join!(guest_up, up_up) {
                    let (mut g, mut u) = (TokioIo::new(g), TokioIo::new(u));
                    let _ = tokio::io::copy_bidirectional(&mut g, &mut u).await;
                }
            });
        }
    }
    Ok(resp.map(|b| b.map_err(BoxError::from).boxed()))
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(v: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    v.as_bytes().split(|&b| b == b',').map(|t| t.trim_ascii())
}

/// Some `name` header lists `token` (ASCII case ignored).
fn has_token(h: &hyper::HeaderMap, name: &header::HeaderName, token: &[u8]) -> bool {
    h.get_all(name)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
}

/// Apply the plan to a request: header values, target, body.
async fn rewrite(
    sh: &Arc<Shared>,
    plan: &Plan,
    req: Request<Incoming>,
    stream_violation: &Arc<Mutex<Option<Violation>>>,
) -> Result<Request<HBody>, Response<HBody>> {
    let (mut parts, body) = req.into_parts();
    let mut bad_value = false;
    for (name, value) in parts.headers.iter_mut() {
        match plan.header(name.as_str(), value.as_bytes()) {
            Ok(None) => {}
            Ok(Some(new)) => match HeaderValue::from_bytes(&new) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    *value = v;
                }
                // A value with CR, LF or NUL: never let it split the header block.
                Err(_) => bad_value = true,
            },
            Err(v) => return Err(sh.blocked(&v)),
        }
    }
    if bad_value {
        return Err(sh.refuse(
            StatusCode::BAD_REQUEST,
            "microsandbox: a substituted header value is not a valid header value",
        ));
    }
    if let Some(pq) = parts.uri.path_and_query() {
        match plan.target(pq.as_str()) {
            Ok(None) => {}
            Ok(Some(new)) => {
                let mut up = parts.uri.clone().into_parts();
                let Ok(pq) = PathAndQuery::try_from(new) else {
                    return Err(sh.refuse(
                        StatusCode::BAD_REQUEST,
                        "microsandbox: the substituted target is not a valid target",
                    ));
                };
                up.path_and_query = Some(pq);
                match Uri::from_parts(up) {
                    Ok(u) => parts.uri = u,
                    Err(_) => {
                        return Err(sh.refuse(
                            StatusCode::BAD_REQUEST,
                            "microsandbox: the substituted target is not a valid target",
                        ))
                    }
                }
            }
            Err(v) => return Err(sh.blocked(&v)),
        }
    }
    let encoded = parts
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        // A transfer coding other than chunked (`gzip, chunked`): not identity either.
        || parts
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .any(|v| tokens(v).any(|t| !t.eq_ignore_ascii_case(b"chunked")));
    if !plan.wants_body() || encoded || body.is_end_stream() {
        return Ok(Request::from_parts(
            parts,
            body.map_err(BoxError::from).boxed(),
        ));
    }
    let cl = parts.headers.get(header::CONTENT_LENGTH);
    if let Some(cl) = cl {
        let Some(n) = cl.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) else {
            return Err(sh.refuse(StatusCode::BAD_REQUEST, "microsandbox: bad Content-Length"));
        };
        if n > MAX_BODY_SCAN_BYTES as u64 {
            // Too large to buffer: scanned as it streams, Content-Length kept. A
            // substitution that changes the length makes the upstream request fail
            // (hyper enforces the length), so bodies this large are in effect only
            // scanned, never substituted.
            let body = ScanBody::new(body, plan, stream_violation);
            return Ok(Request::from_parts(parts, body.boxed()));
        }
        // Buffered bodies share one budget per sandbox (100 HTTP/2 streams of 16 MiB
        // each must not mean 1.6 GB): wait for room, as long as a body may take.
        let kib = (n / 1024 + 1) as u32;
        let budget = sh.ic.body_budget.clone();
        let permit = match tokio::time::timeout(BODY_TIMEOUT, budget.acquire_many_owned(kib)).await
        {
            Ok(Ok(p)) => p,
            _ => {
                return Err(sh.refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "microsandbox: too many request bodies buffered",
                ))
            }
        };
        let collected = tokio::time::timeout(
            BODY_TIMEOUT,
            Limited::new(body, MAX_BODY_SCAN_BYTES).collect(),
        )
        .await;
        let data = match collected {
            Ok(Ok(c)) => c.to_bytes(),
            _ => {
                return Err(sh.refuse(
                    StatusCode::BAD_REQUEST,
                    "microsandbox: request body incomplete",
                ))
            }
        };
        let data = match plan.body(&data) {
            Ok(None) => data,
            Ok(Some(new)) => Bytes::from(new),
            Err(v) => return Err(sh.blocked(&v)),
        };
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
        let body = Held {
            inner: Full::new(data),
            _permit: permit,
        };
        return Ok(Request::from_parts(parts, body.boxed()));
    }
    // Chunked (HTTP/1) or HTTP/2 without a length: substituted as it streams.
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = ScanBody::new(body, plan, stream_violation);
    Ok(Request::from_parts(parts, body.boxed()))
}

/// A request body substituted as it streams (BodyStream holds back what could be the
/// start of a placeholder until the next chunk shows it is not).
struct ScanBody {
    inner: Incoming,
    stream: BodyStream,
    done: bool,
    trailers: Option<hyper::HeaderMap>,
    violation: Arc<Mutex<Option<Violation>>>,
}

impl ScanBody {
    fn new(inner: Incoming, plan: &Plan, violation: &Arc<Mutex<Option<Violation>>>) -> Self {
        ScanBody {
            inner,
            stream: plan.body_stream(),
            done: false,
            trailers: None,
            violation: violation.clone(),
        }
    }

    fn fail(&mut self, v: Violation) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        *self.violation.lock().unwrap() = Some(v);
        self.done = true;
        self.trailers = None;
        Poll::Ready(Some(Err("secret violation in the request body".into())))
    }
}

impl Body for ScanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(t) = this.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(f) => f,
            };
            match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => match this.stream.feed(&d) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(v) => return this.fail(v),
                    },
                    Err(f) => {
                        this.trailers = f.into_trailers().ok();
                        this.done = true;
                        match this.stream.finish() {
                            Ok(out) if out.is_empty() => continue,
                            Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                            Err(v) => return this.fail(v),
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    this.done = true;
                    match this.stream.finish() {
                        Ok(out) if out.is_empty() => return Poll::Ready(None),
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(v) => return this.fail(v),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A buffered body that holds its share of the buffer budget until it is dropped.
struct Held {
    inner: Full<Bytes>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.get_mut().inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(Some(Err(e))) => match e {},
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
