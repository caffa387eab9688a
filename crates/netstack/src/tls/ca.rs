//! The interception CA: one per installation, `$MSB_HOME/tls/ca.{crt,key}`, created once
//! under a lock. The guest trusts its certificate; its key never leaves the host.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::error::NetError;

pub(crate) const CA_COMMON_NAME: &str = "microsandbox interception CA";
const CA_VALIDITY_DAYS: i64 = 3650;

/// The CA certificate and key, and the one leaf key pair this runtime signs all its leaf
/// certificates for (certs.rs).
pub struct CertificateAuthority {
    cert_pem: String,
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) leaf_key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> NetError {
    NetError::Tls(format!("{what} {}: {e}", path.display()))
}

fn rc_err(e: rcgen::Error) -> NetError {
    NetError::Tls(format!("certificate: {e}"))
}

impl CertificateAuthority {
    /// Load `dir/ca.crt` and `dir/ca.key`, or create them (ECDSA P-256, path length 0,
    /// ten years). Creation runs under an exclusive `flock` on `dir/.lock`, so concurrent
    /// runtimes agree on one CA; each file is written to a temporary name and renamed,
    /// the key first, so that a certificate always has its key next to it.
    pub fn load_or_create(dir: &Path) -> Result<CertificateAuthority, NetError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err("cannot create", dir, e))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_err("cannot open", &lock_path, e))?;
        // SAFETY: flock on an fd we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(
                "cannot lock",
                &lock_path,
                std::io::Error::last_os_error(),
            ));
        }
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (cert_pem, ca_key) = if crt.exists() {
            let cert_pem = fs::read_to_string(&crt).map_err(|e| io_err("cannot read", &crt, e))?;
            let key_pem = zeroize::Zeroizing::new(
                fs::read_to_string(&key).map_err(|e| io_err("cannot read", &key, e))?,
            );
            let kp = KeyPair::from_pem(&key_pem).map_err(rc_err)?;
            (cert_pem, kp)
        } else {
            let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc_err)?;
            let cert = ca_params().self_signed(&kp).map_err(rc_err)?;
            let key_pem = zeroize::Zeroizing::new(kp.serialize_pem());
            write_atomic(&key, key_pem.as_bytes())?;
            write_atomic(&crt, cert.pem().as_bytes())?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            (cert.pem(), kp)
        };
        drop(lock);
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, ca_key)
            .map_err(|e| NetError::Tls(format!("{}: {e}", crt.display())))?;
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc_err)?;
        Ok(CertificateAuthority {
            cert_pem,
            issuer,
            leaf_key,
        })
    }

    /// The CA certificate (PEM), for the guest's trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    p.distinguished_name
        .push(DnType::OrganizationName, "microsandbox");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    p.serial_number = Some(random_serial());
    p
}

/// 16 random bytes, top bit clear (a positive serial number).
pub(crate) fn random_serial() -> rcgen::SerialNumber {
    let mut b = [0u8; 16];
    // ring's SystemRandom (getrandom); failure is practically impossible, and a serial
    // only needs to be unique, so fall back to the clock.
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut b)
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = t.to_be_bytes();
    }
    b[0] &= 0x7f;
    b[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&b)
}

/// Write `data` to `path` via a temporary file in the same directory (mode 0600), synced
/// and renamed.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), NetError> {
    let tmp: PathBuf = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err("cannot create", &tmp, e))?;
    let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600));
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err("cannot write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("cannot rename to", path, e))
}
