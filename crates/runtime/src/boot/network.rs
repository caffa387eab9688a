//! The guest's network: our userspace stack (crates/netstack) served to QEMU on net.sock,
//! over vhost-user (the stack maps guest memory: it must be shared) or, for templated
//! layouts whose restores map their memory private, as `-netdev stream` frames; or one
//! of bench/net's baselines (crate::bench_backends).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use msb_netstack::{CertificateAuthority, Interceptor, NetConfig, NetStack, VhostListener};
use msb_protocol::GuestNetwork;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use super::error::NetworkError;
use crate::bench_backends::Baseline;
use crate::vm::NetBackend;
use crate::{log_error, sandbox::Sandbox};

/// What the guest's NIC is connected to.
pub enum Network {
    /// Our stack; it serves QEMU in a task of its own (`task`). With TLS interception
    /// (secrets), its interceptor. `stream`: `-netdev stream` rather than vhost-user.
    Stack {
        stack: NetStack,
        interceptor: Option<Arc<Interceptor>>,
        stream: bool,
        task: JoinHandle<()>,
    },
    /// A bench baseline with the guest's MTU (never, without the bench-backends feature).
    Baseline(Baseline, u16),
}

impl Network {
    /// The NIC on QEMU's command line: (backend, guest MAC, MTU).
    pub fn nic<'a>(&self, net_sock: &'a Path) -> (NetBackend<'a>, String, u16) {
        match self {
            Network::Stack { stack, stream, .. } => {
                let c = stack.config();
                let backend = if *stream {
                    NetBackend::Stream(net_sock)
                } else {
                    NetBackend::VhostUser(net_sock)
                };
                (backend, c.guest_mac.to_string(), c.mtu)
            }
            Network::Baseline(b, mtu) => b.nic(net_sock, *mtu),
        }
    }

    /// The guest's side of it, for the bootstrap.
    pub fn guest(&self) -> GuestNetwork {
        match self {
            Network::Stack { stack, .. } => {
                let c = stack.config();
                GuestNetwork {
                    ip: c.guest_ip,
                    prefix_len: c.prefix_len,
                    gateway: c.gateway_ip,
                    mtu: c.mtu,
                    host_ip: c.effective_host_ip(),
                    dns: c.dns,
                }
            }
            Network::Baseline(b, mtu) => b.guest(*mtu),
        }
    }

    /// The interception CA the guest must trust (PEM), when its TLS is intercepted.
    pub fn ca_cert_pem(&self) -> Option<String> {
        match self {
            Network::Stack {
                interceptor: Some(i),
                ..
            } => Some(i.ca_cert_pem()),
            _ => None,
        }
    }

    /// The interceptor, when the sandbox has secrets or asked for TLS interception.
    pub fn interceptor(&self) -> Option<Arc<Interceptor>> {
        match self {
            Network::Stack { interceptor, .. } => interceptor.clone(),
            Network::Baseline(..) => None,
        }
    }

    /// The stack, whose counters feed the metrics.
    pub fn stack(&self) -> Option<&NetStack> {
        match self {
            Network::Stack { stack, .. } => Some(stack),
            Network::Baseline(..) => None,
        }
    }
}

impl Sandbox {
    /// Boot step "attach network": bind the published ports now (a taken port fails the
    /// boot before QEMU starts), listen for QEMU's frames, and serve them once it connects.
    /// None: the sandbox has no network (no NIC at all).
    pub(super) async fn attach_network(
        &mut self,
        stream: bool,
    ) -> Result<Option<Network>, NetworkError> {
        let Some(json) = &self.cfg.network else {
            return Ok(None);
        };
        let cfg = NetConfig::from_json(&json.to_string())
            .map_err(|e| NetworkError::Config(e.to_string()))?;
        if let Some(baseline) = self.baseline {
            let mtu = baseline.mtu(cfg.mtu);
            if let Some(child) = baseline.start(mtu, &mut self.net_sock).await? {
                self.helpers.push(child);
            }
            return Ok(Some(Network::Baseline(baseline, mtu)));
        }
        // The values arrived on stdin with the config; from here on only the interceptor
        // holds them (zeroized when it goes).
        let values = std::mem::take(&mut self.cfg.secret_values);
        let interceptor = match &cfg.tls {
            None => None,
            Some(_) => {
                let ca = CertificateAuthority::load_or_create(&self.cfg.msb_home.join("tls"))
                    .map_err(|e| NetworkError::Config(format!("interception CA: {e}")))?;
                let i = Interceptor::new(&cfg, values, ca)
                    .map_err(|e| NetworkError::Config(e.to_string()))?;
                let missing = i.missing_values();
                if !missing.is_empty() {
                    log_error(&format!(
                        "secrets without a value (started without them): {}; their placeholders are blocked",
                        missing.join(", ")
                    ));
                }
                Some(i)
            }
        };
        Ok(Some(self.serve_network(cfg, interceptor, stream).await?))
    }

    /// The network of a boot that starts over (a memory template that would not load):
    /// the first stack is done once its QEMU is gone; a new one takes its place, on the
    /// same configuration and interceptor (the published ports are bound again).
    pub(super) async fn restart_network(
        &mut self,
        net: Option<Network>,
    ) -> Result<Option<Network>, NetworkError> {
        match net {
            Some(Network::Stack {
                stack,
                interceptor,
                stream,
                task,
            }) => {
                let cfg = stack.config().clone();
                drop(stack);
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                Ok(Some(self.serve_network(cfg, interceptor, stream).await?))
            }
            other => Ok(other),
        }
    }

    /// Bind the stack (its published ports) and net.sock, and serve QEMU once it connects.
    async fn serve_network(
        &mut self,
        cfg: NetConfig,
        interceptor: Option<Arc<Interceptor>>,
        stream: bool,
    ) -> Result<Network, NetworkError> {
        let mut stack = NetStack::bind(cfg)
            .await
            .map_err(|e| NetworkError::Config(e.to_string()))?;
        if let Some(i) = &interceptor {
            stack = stack.with_interceptor(i.clone());
        }
        // Bound before QEMU starts: QEMU connects to it while it sets up the NIC.
        let serving = stack.clone();
        let serve = if stream {
            let _ = std::fs::remove_file(&self.net_sock);
            let listener = UnixListener::bind(&self.net_sock)
                .map_err(|e| NetworkError::Listen(format!("{}: {e}", self.net_sock.display())))?;
            tokio::spawn(async move {
                let (conn, _) = listener
                    .accept()
                    .await
                    .map_err(msb_netstack::NetError::Io)?;
                serving.serve(conn).await
            })
        } else {
            let listener = VhostListener::bind(&self.net_sock)
                .map_err(|e| NetworkError::Listen(e.to_string()))?;
            tokio::spawn(async move { serving.serve_vhost_user(listener).await })
        };
        let task = tokio::spawn(async move {
            // The stack runs in a task of its own so that a panic in it (a bug, found by a
            // hostile guest) is said plainly in runtime.log, next to the panic message,
            // instead of the guest silently going offline.
            match serve.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log_error(&format!("network: {e}")),
                Err(e) if e.is_panic() => log_error(
                    "network: the stack crashed (a bug); the sandbox has no network from now on",
                ),
                Err(_) => {}
            }
        });
        Ok(Network::Stack {
            stack,
            interceptor,
            stream,
            task,
        })
    }
}
