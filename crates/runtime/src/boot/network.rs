//! The guest's network: our userspace stack (crates/netstack) served to QEMU over
//! vhost-user on net.sock, or one of bench/net's baselines (crate::bench_backends).

use std::path::Path;

use msb_netstack::{NetConfig, NetStack, VhostListener};
use msb_protocol::GuestNetwork;

use super::error::NetworkError;
use crate::bench_backends::Baseline;
use crate::vm::NetBackend;
use crate::{log_error, sandbox::Sandbox};

/// What the guest's NIC is connected to.
pub enum Network {
    /// Our stack; it serves QEMU in a task of its own.
    Stack(NetStack),
    /// A bench baseline with the guest's MTU (never, without the bench-backends feature).
    Baseline(Baseline, u16),
}

impl Network {
    /// The NIC on QEMU's command line: (backend, guest MAC, MTU).
    pub fn nic<'a>(&self, net_sock: &'a Path) -> (NetBackend<'a>, String, u16) {
        match self {
            Network::Stack(stack) => {
                let c = stack.config();
                (
                    NetBackend::VhostUser(net_sock),
                    c.guest_mac.to_string(),
                    c.mtu,
                )
            }
            Network::Baseline(b, mtu) => b.nic(net_sock, *mtu),
        }
    }

    /// The guest's side of it, for the bootstrap.
    pub fn guest(&self) -> GuestNetwork {
        match self {
            Network::Stack(stack) => {
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

    /// The stack, whose counters feed the metrics.
    pub fn stack(&self) -> Option<&NetStack> {
        match self {
            Network::Stack(stack) => Some(stack),
            Network::Baseline(..) => None,
        }
    }
}

impl Sandbox {
    /// Boot step "attach network": bind the published ports now (a taken port fails the
    /// boot before QEMU starts), listen for QEMU's frames, and serve them once it connects.
    /// None: the sandbox has no network (no NIC at all).
    pub(super) async fn attach_network(&mut self) -> Result<Option<Network>, NetworkError> {
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
        let stack = NetStack::bind(cfg)
            .await
            .map_err(|e| NetworkError::Config(e.to_string()))?;
        // Bound before QEMU starts: QEMU connects to it while it sets up the NIC.
        let listener =
            VhostListener::bind(&self.net_sock).map_err(|e| NetworkError::Listen(e.to_string()))?;
        let serving = stack.clone();
        tokio::spawn(async move {
            // The stack runs in a task of its own so that a panic in it (a bug, found by a
            // hostile guest) is said plainly in runtime.log, next to the panic message,
            // instead of the guest silently going offline.
            match tokio::spawn(async move { serving.serve_vhost_user(listener).await }).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log_error(&format!("network: {e}")),
                Err(e) if e.is_panic() => log_error(
                    "network: the stack crashed (a bug); the sandbox has no network from now on",
                ),
                Err(_) => {}
            }
        });
        Ok(Some(Network::Stack(stack)))
    }
}
