//! Environment lists: a base (image, sandbox) with overrides (sandbox, exec) on top.

use std::collections::HashMap;

/// `base` with `overrides` applied in order: a variable set again replaces the earlier
/// value, and sits where its last setting is (base entries first, in their order, then
/// the overrides). Linear in the number of variables (10 000 of them are routine).
pub fn merge(base: &[(String, String)], overrides: &[(String, String)]) -> Vec<(String, String)> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(overrides.len());
    for (i, (k, _)) in overrides.iter().enumerate() {
        last.insert(k.as_str(), i);
    }
    let mut out = Vec::with_capacity(base.len() + last.len());
    let mut seen_base: HashMap<&str, usize> = HashMap::with_capacity(base.len());
    for (k, v) in base {
        if last.contains_key(k.as_str()) {
            continue;
        }
        // A base list with a name twice keeps its last value, at the first place.
        match seen_base.get(k.as_str()) {
            Some(&at) => out[at] = (k.clone(), v.clone()),
            None => {
                seen_base.insert(k.as_str(), out.len());
                out.push((k.clone(), v.clone()));
            }
        }
    }
    for (i, (k, v)) in overrides.iter().enumerate() {
        if last.get(k.as_str()) == Some(&i) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_replace_and_move_to_the_end_last_one_wins() {
        let base = kv(&[("PATH", "/bin"), ("HOME", "/root"), ("A", "1")]);
        let over = kv(&[("HOME", "/home/x"), ("B", "2"), ("HOME", "/h")]);
        assert_eq!(
            merge(&base, &over),
            kv(&[("PATH", "/bin"), ("A", "1"), ("B", "2"), ("HOME", "/h")])
        );
        assert_eq!(merge(&base, &[]), base);
    }

    #[test]
    fn ten_thousand_variables_are_linear() {
        let base: Vec<_> = (0..10_000)
            .map(|i| (format!("K{i}"), "v".to_string()))
            .collect();
        let over: Vec<_> = (5_000..15_000)
            .map(|i| (format!("K{i}"), "w".to_string()))
            .collect();
        let start = std::time::Instant::now();
        let m = merge(&base, &over);
        // The quadratic version took seconds for this; a generous bound that still fails it.
        assert!(start.elapsed() < std::time::Duration::from_millis(500));
        assert_eq!(m.len(), 15_000);
        assert_eq!(m[4_999], ("K4999".to_string(), "v".to_string()));
        assert_eq!(m[5_000], ("K5000".to_string(), "w".to_string()));
    }
}
