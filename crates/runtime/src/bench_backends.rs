//! bench/net's baseline networks: QEMU's user networking (`MSB_NET_BACKEND=user`) and
//! passt (`MSB_NET_BACKEND=passt`) in place of our stack, on the same VM, so that the bench
//! can compare them. Not part of the product: compiled only with the `bench-backends`
//! feature (`cargo build --release -p msb-runtime --features bench-backends`). Without
//! it, [`Baseline`] has no values, and asking for one fails the start with a clear error.
//!
//! With a baseline the guest reaches the host at the gateway, 10.0.2.2; passt gets the MTU
//! of the network configuration, QEMU's user networking stays at 1500 (it has no setting).

use crate::boot::error::NetworkError;

/// Which baseline `MSB_NET_BACKEND` asks for: None (unset, empty or any other value) is
/// our stack.
fn requested() -> Option<&'static str> {
    match std::env::var("MSB_NET_BACKEND").as_deref() {
        Ok("user") => Some("user"),
        Ok("passt") => Some("passt"),
        _ => None,
    }
}

#[cfg(not(feature = "bench-backends"))]
pub use off::Baseline;
#[cfg(feature = "bench-backends")]
pub use on::Baseline;

#[cfg(not(feature = "bench-backends"))]
mod off {
    use std::path::{Path, PathBuf};

    use msb_protocol::GuestNetwork;
    use tokio::process::Child;

    use super::requested;
    use crate::boot::error::NetworkError;
    use crate::vm::NetBackend;

    /// No baselines in this build: a value of this type cannot exist, so every use of one
    /// in the boot path is dead code the compiler drops.
    #[derive(Debug, Clone, Copy)]
    pub enum Baseline {}

    impl Baseline {
        pub fn from_env() -> Result<Option<Baseline>, NetworkError> {
            match requested() {
                Some(name) => Err(NetworkError::BenchBackendNotBuilt(name.into())),
                None => Ok(None),
            }
        }

        pub fn mtu(self, _configured: u16) -> u16 {
            match self {}
        }

        pub async fn start(
            self,
            _mtu: u16,
            _net_sock: &mut PathBuf,
        ) -> Result<Option<Child>, NetworkError> {
            match self {}
        }

        pub fn nic(self, _net_sock: &Path, _mtu: u16) -> (NetBackend<'_>, String, u16) {
            match self {}
        }

        pub fn guest(self, _mtu: u16) -> GuestNetwork {
            match self {}
        }
    }
}

#[cfg(feature = "bench-backends")]
mod on {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use msb_protocol::GuestNetwork;
    use tokio::process::Child;

    use super::requested;
    use crate::boot::error::NetworkError;
    use crate::vm::NetBackend;

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Baseline {
        /// QEMU's user networking (`-netdev user`).
        User,
        /// passt on a frames socket (`-netdev stream`).
        Passt,
    }

    impl Baseline {
        pub fn from_env() -> Result<Option<Baseline>, NetworkError> {
            Ok(match requested() {
                Some("user") => Some(Baseline::User),
                Some(_) => Some(Baseline::Passt),
                None => None,
            })
        }

        /// The guest's MTU with this baseline, given the configured one.
        pub fn mtu(self, configured: u16) -> u16 {
            match self {
                Baseline::Passt => configured,
                Baseline::User => 1500,
            }
        }

        /// Start what the baseline needs on the host (passt, whose socket replaces
        /// `net_sock`: it drops to an unprivileged user before binding, so it goes in /tmp).
        pub async fn start(
            self,
            mtu: u16,
            net_sock: &mut PathBuf,
        ) -> Result<Option<Child>, NetworkError> {
            if self != Baseline::Passt {
                return Ok(None);
            }
            *net_sock = std::env::temp_dir().join(format!("msb-passt-{}.sock", std::process::id()));
            let _ = fs::remove_file(&*net_sock);
            let mut cmd = std::process::Command::new("passt");
            cmd.args(["-f", "-1", "-q", "-s"])
                .arg(&*net_sock)
                .args(["-a", "10.0.2.15", "-n", "24", "-g", "10.0.2.2"])
                .args(["-m", &mtu.to_string()]);
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = tokio::process::Command::from(cmd)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| NetworkError::Baseline(format!("cannot start passt: {e}")))?;
            for _ in 0..500 {
                if net_sock.exists() {
                    return Ok(Some(child));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(NetworkError::Baseline("passt did not start".into()))
        }

        /// The guest's NIC: (backend, MAC, MTU).
        pub fn nic(self, net_sock: &Path, mtu: u16) -> (NetBackend<'_>, String, u16) {
            let backend = match self {
                Baseline::Passt => NetBackend::Stream(net_sock),
                Baseline::User => NetBackend::User,
            };
            (backend, "02:00:00:00:00:15".to_string(), mtu)
        }

        /// QEMU user networking and passt both reach the host at the gateway.
        pub fn guest(self, mtu: u16) -> GuestNetwork {
            GuestNetwork {
                ip: "10.0.2.15".parse().unwrap(),
                prefix_len: 24,
                gateway: "10.0.2.2".parse().unwrap(),
                mtu,
                host_ip: "10.0.2.2".parse().unwrap(),
                dns: false,
            }
        }
    }
}

/// `MSB_NET_BACKEND`, read once at start: a baseline, or our stack (None).
pub fn from_env() -> Result<Option<Baseline>, NetworkError> {
    Baseline::from_env()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test for both values (the environment is the process's: tests run in parallel).
    #[test]
    fn msb_net_backend_is_read_at_start() {
        std::env::set_var("MSB_NET_BACKEND", "");
        assert!(
            from_env().unwrap().is_none(),
            "empty is our stack (bench/net's 'msb')"
        );
        std::env::set_var("MSB_NET_BACKEND", "msb");
        assert!(from_env().unwrap().is_none());
        for name in ["user", "passt"] {
            std::env::set_var("MSB_NET_BACKEND", name);
            #[cfg(not(feature = "bench-backends"))]
            {
                let e = crate::error::RtError::from(from_env().unwrap_err());
                assert_eq!(e.code.as_str(), "invalidConfig");
                assert!(
                    e.message.starts_with(&format!("MSB_NET_BACKEND={name} is a bench-only network backend and this msb-runtime was built without them: build it with `cargo build --release -p msb-runtime --features bench-backends`")),
                    "{}",
                    e.message
                );
            }
            #[cfg(feature = "bench-backends")]
            assert!(from_env().unwrap().is_some());
        }
        std::env::remove_var("MSB_NET_BACKEND");
        assert!(from_env().unwrap().is_none());
    }
}
