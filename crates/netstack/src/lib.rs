//! msb-netstack: the userspace network of one sandbox.
//!
//! msb-runtime serves the guest's virtio-net as a vhost-user backend
//! ([`NetStack::serve_vhost_user`], vhost.rs), or takes a QEMU `-netdev stream` socket
//! where every Ethernet frame is prefixed by its length (4 bytes, big endian;
//! [`NetStack::serve`]). Either way every guest flow is terminated in a userspace TCP/IP
//! stack (smoltcp) and re-opened from an ordinary host socket when the
//! [`Policy`] allows it. Published ports carry connections from 127.0.0.1 into the guest.
//! See README.md for the architecture, the policy semantics and the caps.
//!
//! Modules, lowest first; each uses only modules above it in this list (config.rs and
//! error.rs need each other: the error names a `Proto`, the config returns the error):
//! - config, error, policy, packet, dns, frag, dns_tcp, ping: leaves (config and policy,
//!   packet building and parsing, DNS messages, reassembly, host ping sockets).
//! - shared: the frame bound and the counters; event: the messages to the stack task.
//! - tls: TLS interception with secret substitution (CA, leaf certificates, the
//!   per-flow TLS and HTTP proxy, substitute.rs's engine); only config, error and
//!   secrets_config below it. Used by host (a flow's task) and stack (which flows).
//! - device (smoltcp's view of the guest link), host (host sockets, the stream
//!   transport), vhost and vhost_proxy (the vhost-user transport).
//! - stack: the stack task, which spawns and drives all of the above.
//! - this file: the `NetStack` handle.

pub mod config;
mod device;
pub mod dns;
mod dns_tcp;
mod error;
mod event;
pub mod frag;
mod host;
pub mod packet;
mod ping;
pub mod policy;
pub mod secrets_config;
mod shared;
mod stack;
pub mod tls;
mod vhost;
mod vhost_proxy;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::net::{TcpListener, UdpSocket, UnixStream};

pub use config::{
    Action, Group, MacAddr, NetConfig, Policy, Proto, PublishedPort, Rule, Target, HOST_NAME,
};
pub use error::NetError;
pub use shared::MAX_FRAME_LEN;
pub use tls::{CertificateAuthority, FlowFacts, Interceptor};
pub use vhost::VhostListener;

use shared::Shared;
use stack::Listener;

/// Traffic counters, from the guest's point of view: `rx_bytes` are the bytes of the
/// Ethernet frames the stack wrote to the guest, `tx_bytes` the bytes of the frames the
/// guest wrote (every frame read, including ones that were dropped). The 4-byte length
/// prefixes are not counted; Ethernet headers are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Diagnostic figures (for tests, logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// TCP flows now (pending connects, open, closing; both directions).
    pub tcp_flows: usize,
    /// Highest `tcp_flows` seen.
    pub tcp_flows_peak: usize,
    pub udp_flows: usize,
    /// Flows refused by policy (TCP reset, UDP/ICMP unreachable, published connections),
    /// including ICMP echo requests allowed by policy that cannot be proxied because this
    /// process may open no ICMP socket (answered with an unreachable too).
    pub denied: u64,
    /// TCP SYNs and published connections refused because of `max_connections`, and ICMP
    /// echo requests dropped because 64 were already in flight.
    pub over_cap: u64,
    /// Guest frames dropped as malformed or unsupported (bad checksum, fragment, IPv6,
    /// spoofed source, ...).
    pub dropped_frames: u64,
    pub dns_queries: u64,
}

/// One sandbox's network. Cheap to clone (a handle); [`NetStack::serve`] runs it.
#[derive(Clone)]
pub struct NetStack {
    cfg: Arc<NetConfig>,
    shared: Arc<Shared>,
    listeners: Arc<Mutex<Option<Vec<Listener>>>>,
    published: Arc<Vec<(PublishedPort, SocketAddr)>>,
    interceptor: Option<Arc<Interceptor>>,
}

impl NetStack {
    /// Validate the config and bind the published ports on 127.0.0.1 (so that a port
    /// conflict is reported before the VM starts). Needs a tokio runtime.
    pub async fn bind(cfg: NetConfig) -> Result<NetStack, NetError> {
        cfg.validate()?;
        let mut listeners = Vec::new();
        let mut published = Vec::new();
        for p in &cfg.ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], p.host_port));
            let bind_err = |source| NetError::Bind {
                proto: p.protocol,
                port: p.host_port,
                source,
            };
            match p.protocol {
                Proto::Tcp => {
                    let l = TcpListener::bind(addr).await.map_err(bind_err)?;
                    published.push((*p, l.local_addr().map_err(bind_err)?));
                    listeners.push(Listener::Tcp(l, *p));
                }
                Proto::Udp => {
                    let s = UdpSocket::bind(addr).await.map_err(bind_err)?;
                    published.push((*p, s.local_addr().map_err(bind_err)?));
                    listeners.push(Listener::Udp(Arc::new(s), *p));
                }
                Proto::Icmp => {
                    return Err(NetError::Config("published ports are tcp or udp".into()))
                }
            }
        }
        Ok(NetStack {
            cfg: Arc::new(cfg),
            shared: Arc::new(Shared::default()),
            listeners: Arc::new(Mutex::new(Some(listeners))),
            published: Arc::new(published),
            interceptor: None,
        })
    }

    /// Intercept TLS on `tls.interceptedPorts` with `i` (see tls/). Ignored when the
    /// config has no `tls`. Call before serving.
    pub fn with_interceptor(mut self, i: Arc<Interceptor>) -> NetStack {
        if self.cfg.tls.is_some() {
            self.interceptor = Some(i);
        }
        self
    }

    /// The interceptor in use, if any.
    pub fn interceptor(&self) -> Option<&Arc<Interceptor>> {
        self.interceptor.as_ref()
    }

    /// Bind and serve in one call.
    pub async fn run(cfg: NetConfig, stream: UnixStream) -> Result<(), NetError> {
        NetStack::bind(cfg).await?.serve(stream).await
    }

    /// Serve the guest's frame stream until it closes (`Ok`), carries a bad frame length
    /// or fails (`Err`). Every host socket of the sandbox is closed when this returns or
    /// when the future is dropped. Call once per NetStack.
    pub async fn serve(&self, stream: UnixStream) -> Result<(), NetError> {
        self.serve_on(stack::Transport::Stream(stream)).await
    }

    /// Serve the guest's virtio-net over vhost-user (see vhost.rs): wait for QEMU on
    /// `listener`, then run until QEMU disconnects. Otherwise as [`NetStack::serve`].
    pub async fn serve_vhost_user(&self, listener: VhostListener) -> Result<(), NetError> {
        self.serve_on(stack::Transport::VhostUser(listener)).await
    }

    async fn serve_on(&self, transport: stack::Transport) -> Result<(), NetError> {
        let listeners = self
            .listeners
            .lock()
            .unwrap()
            .take()
            .ok_or(NetError::AlreadyServed)?;
        stack::run(
            self.cfg.clone(),
            self.shared.clone(),
            transport,
            listeners,
            self.interceptor.clone(),
        )
        .await
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The published ports with the addresses they are bound to (useful with
    /// `host_port: 0`).
    pub fn published(&self) -> Vec<(PublishedPort, SocketAddr)> {
        self.published.to_vec()
    }

    pub fn counters(&self) -> Counters {
        Counters {
            rx_bytes: self.shared.rx_bytes.load(Ordering::Relaxed),
            tx_bytes: self.shared.tx_bytes.load(Ordering::Relaxed),
        }
    }

    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            tcp_flows: s.tcp_flows.load(Ordering::Relaxed),
            tcp_flows_peak: s.tcp_flows_peak.load(Ordering::Relaxed),
            udp_flows: s.udp_flows.load(Ordering::Relaxed),
            denied: s.denied.load(Ordering::Relaxed),
            over_cap: s.over_cap.load(Ordering::Relaxed),
            dropped_frames: s.dropped_frames.load(Ordering::Relaxed),
            dns_queries: s.dns_queries.load(Ordering::Relaxed),
        }
    }
}
