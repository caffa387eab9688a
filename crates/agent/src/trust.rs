//! The interception CA in the guest's trust store: written at every bootstrap when the
//! host intercepts the sandbox's TLS, idempotently (a stop/start keeps the upper disk, so
//! the bundle may already hold an earlier copy, which is replaced, never appended twice).

use std::fs;
use std::path::Path;

/// Where the CA itself goes (Debian/Ubuntu's and Alpine's `update-ca-certificates` and
/// RHEL's `update-ca-trust` pick it up again if the user regenerates the bundle).
const ANCHORS: [(&str, &str); 2] = [
    (
        "/usr/local/share/ca-certificates",
        "/usr/local/share/ca-certificates/microsandbox-ca.crt",
    ),
    (
        "/etc/pki/ca-trust/source/anchors",
        "/etc/pki/ca-trust/source/anchors/microsandbox-ca.crt",
    ),
];

/// The bundles TLS libraries read: Debian/Ubuntu/Alpine, RHEL/Fedora, Alpine's and
/// macOS-style `cert.pem`, SUSE.
const BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// Created when the image has no bundle at all.
const DEFAULT_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const BEGIN: &str = "# microsandbox-ca begin\n";
const END: &str = "# microsandbox-ca end\n";

/// Install `pem` under `root` ("/" in the guest) and return the variables that point
/// commands at it.
pub fn install_ca(root: &Path, pem: &str) -> Result<Vec<(String, String)>, String> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let pem = if pem.ends_with('\n') {
        pem.to_string()
    } else {
        format!("{pem}\n")
    };
    let mut ca_file = None;
    for (i, (dir, file)) in ANCHORS.iter().enumerate() {
        // The Debian path is made if absent (the image may have no CA tooling at all);
        // the RHEL one only where that tooling exists.
        if i == 0 {
            fs::create_dir_all(at(dir)).map_err(|e| format!("mkdir {dir}: {e}"))?;
        } else if !at(dir).is_dir() {
            continue;
        }
        fs::write(at(file), &pem).map_err(|e| format!("write {file}: {e}"))?;
        ca_file.get_or_insert(*file);
    }
    let mut bundles: Vec<&str> = Vec::new();
    let mut seen = Vec::new();
    for b in BUNDLES {
        // The same file under two names (Alpine's cert.pem is a link) is updated once.
        if let Ok(real) = fs::canonicalize(at(b)) {
            if !seen.contains(&real) {
                seen.push(real);
                bundles.push(b);
            }
        }
    }
    if bundles.is_empty() {
        let dir = Path::new(DEFAULT_BUNDLE)
            .parent()
            .unwrap()
            .to_str()
            .unwrap();
        fs::create_dir_all(at(dir)).map_err(|e| format!("mkdir {dir}: {e}"))?;
        fs::write(at(DEFAULT_BUNDLE), "").map_err(|e| format!("create {DEFAULT_BUNDLE}: {e}"))?;
        bundles.push(DEFAULT_BUNDLE);
    }
    for b in &bundles {
        let old = fs::read_to_string(at(b)).unwrap_or_default();
        fs::write(at(b), with_block(&old, &pem)).map_err(|e| format!("write {b}: {e}"))?;
    }
    let bundle = bundles[0].to_string();
    Ok(vec![
        ("SSL_CERT_FILE".into(), bundle.clone()),
        ("REQUESTS_CA_BUNDLE".into(), bundle.clone()),
        ("CURL_CA_BUNDLE".into(), bundle),
        (
            "NODE_EXTRA_CA_CERTS".into(),
            ca_file.unwrap_or(ANCHORS[0].1).into(),
        ),
        ("DENO_CERT".into(), ca_file.unwrap_or(ANCHORS[0].1).into()),
    ])
}

/// `bundle` with our block (between the markers) replaced by `pem`, or appended.
fn with_block(bundle: &str, pem: &str) -> String {
    let mut out = String::with_capacity(bundle.len() + pem.len() + 64);
    match (bundle.find(BEGIN), bundle.find(END)) {
        (Some(b), Some(e)) if e > b => {
            out.push_str(&bundle[..b]);
            out.push_str(&bundle[e + END.len()..]);
        }
        _ => out.push_str(bundle),
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(BEGIN);
    out.push_str(pem);
    out.push_str(END);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("msb-trust-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn no_bundle_creates_one_and_is_idempotent() {
        let r = tmp("none");
        let env = install_ca(&r, PEM).unwrap();
        assert_eq!(env[0], ("SSL_CERT_FILE".into(), DEFAULT_BUNDLE.into()));
        let b = fs::read_to_string(r.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert_eq!(b, format!("{BEGIN}{PEM}{END}"));
        install_ca(&r, PEM).unwrap();
        let again = fs::read_to_string(r.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert_eq!(again, b);
        let ca = fs::read_to_string(r.join("usr/local/share/ca-certificates/microsandbox-ca.crt"));
        assert_eq!(ca.unwrap(), PEM);
    }

    #[test]
    fn existing_bundle_keeps_its_roots_and_a_new_ca_replaces_the_old() {
        let r = tmp("debian");
        fs::create_dir_all(r.join("etc/ssl/certs")).unwrap();
        fs::write(r.join("etc/ssl/certs/ca-certificates.crt"), "ROOT1\nROOT2").unwrap();
        install_ca(&r, PEM).unwrap();
        let other = PEM.replace("AAAA", "BBBB");
        install_ca(&r, &other).unwrap();
        let b = fs::read_to_string(r.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert_eq!(b, format!("ROOT1\nROOT2\n{BEGIN}{other}{END}"));
    }

    #[test]
    fn rhel_layout_and_linked_bundles_are_updated_once() {
        let r = tmp("rhel");
        fs::create_dir_all(r.join("etc/pki/tls/certs")).unwrap();
        fs::create_dir_all(r.join("etc/pki/ca-trust/source/anchors")).unwrap();
        fs::write(r.join("etc/pki/tls/certs/ca-bundle.crt"), "R\n").unwrap();
        fs::create_dir_all(r.join("etc/ssl")).unwrap();
        std::os::unix::fs::symlink(
            r.join("etc/pki/tls/certs/ca-bundle.crt"),
            r.join("etc/ssl/cert.pem"),
        )
        .unwrap();
        let env = install_ca(&r, PEM).unwrap();
        assert_eq!(env[0].1, "/etc/pki/tls/certs/ca-bundle.crt");
        let b = fs::read_to_string(r.join("etc/pki/tls/certs/ca-bundle.crt")).unwrap();
        assert_eq!(b.matches(BEGIN).count(), 1);
        assert!(r
            .join("etc/pki/ca-trust/source/anchors/microsandbox-ca.crt")
            .is_file());
    }
}
