//! Leaf certificates for the guest side of intercepted flows: one per SNI, signed by the
//! CA for the runtime's single leaf key, cached (bounded) and minted off the runtime
//! thread (msb-runtime runs a current-thread tokio runtime).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ca::{random_serial, CertificateAuthority};
use crate::error::NetError;

/// Most leaf certificates kept.
const CACHE_MAX: usize = 1000;
/// Validity of a leaf; it is replaced this long before it ends.
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// `not_before` this far in the past, for guests whose clock lags.
const BACKDATE: Duration = Duration::from_secs(3600);

pub(crate) struct LeafCache {
    ca: Arc<CertificateAuthority>,
    key: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
}

impl LeafCache {
    pub(crate) fn new(ca: Arc<CertificateAuthority>) -> Result<LeafCache, NetError> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.leaf_key.serialize_der()));
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&der)
            .map_err(|e| NetError::Tls(format!("leaf key: {e}")))?;
        Ok(LeafCache {
            ca,
            key,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate for `name` (lower case, no trailing dot), from the cache or minted.
    pub(crate) async fn get(&self, name: &str) -> Result<Arc<CertifiedKey>, NetError> {
        let now = Instant::now();
        if let Some((ck, renew_at)) = self.cache.lock().unwrap().get(name) {
            if *renew_at > now {
                return Ok(ck.clone());
            }
        }
        let ca = self.ca.clone();
        let n = name.to_owned();
        let der = tokio::task::spawn_blocking(move || mint(&ca, &n))
            .await
            .map_err(|e| NetError::Tls(format!("minting a certificate: {e}")))??;
        let ck = Arc::new(CertifiedKey::new(vec![der], self.key.clone()));
        let mut c = self.cache.lock().unwrap();
        if c.len() >= CACHE_MAX && !c.contains_key(name) {
            // Evict the entry due soonest (expired ones first).
            if let Some(k) = c.iter().min_by_key(|e| e.1 .1).map(|e| e.0.clone()) {
                c.remove(&k);
            }
        }
        c.insert(
            name.to_owned(),
            (
                ck.clone(),
                now + LEAF_VALIDITY - BACKDATE.min(LEAF_VALIDITY) - RENEW_BEFORE,
            ),
        );
        Ok(ck)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cache.lock().unwrap().len()
    }
}

fn mint(
    ca: &CertificateAuthority,
    name: &str,
) -> Result<rustls_pki_types::CertificateDer<'static>, NetError> {
    let err = |e: rcgen::Error| NetError::Tls(format!("certificate for {name:?}: {e}"));
    let mut p = CertificateParams::new(vec![name.to_owned()]).map_err(err)?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    // Unique serials: NSS refuses two different certificates with one issuer and serial.
    p.serial_number = Some(random_serial());
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - BACKDATE;
    p.not_after = now - BACKDATE + LEAF_VALIDITY;
    let cert = p.signed_by(&ca.leaf_key, &ca.issuer).map_err(err)?;
    Ok(cert.der().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leaves_are_cached_per_name() {
        let dir = std::env::temp_dir().join(format!("msb-leaf-{}", std::process::id()));
        let ca = Arc::new(CertificateAuthority::load_or_create(&dir).unwrap());
        let c = LeafCache::new(ca).unwrap();
        let a = c.get("api.example.test").await.unwrap();
        let b = c.get("api.example.test").await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let d = c.get("other.example.test").await.unwrap();
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(c.len(), 2);
        // One key for all leaves, one certificate per name.
        assert_ne!(a.cert[0], d.cert[0]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
