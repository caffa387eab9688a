//! The committed TypeScript declarations are what the Rust types give now.

use std::path::PathBuf;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../packages/contract/src/generated.ts")
}

#[test]
fn generated_typescript_is_current() {
    let now = msb_contract::typescript();
    let path = committed();
    if std::env::var_os("MSB_BLESS").is_some() {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old != now {
        let first = old
            .lines()
            .zip(now.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(old.lines().count().min(now.lines().count()));
        panic!(
            "{} is out of date (first difference at line {}): run `MSB_BLESS=1 cargo test -p msb-contract` and commit it",
            path.display(),
            first + 1
        );
    }
}
