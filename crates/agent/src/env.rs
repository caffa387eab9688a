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
    fn base_duplicates_keep_the_last_value_at_the_first_place() {
        let base = kv(&[("A", "1"), ("B", "2"), ("A", "3"), ("C", "4"), ("B", "5")]);
        assert_eq!(merge(&base, &[]), kv(&[("A", "3"), ("B", "5"), ("C", "4")]));
        // Overridden, every copy of the base entry goes.
        assert_eq!(
            merge(&base, &kv(&[("A", "x")])),
            kv(&[("B", "5"), ("C", "4"), ("A", "x")])
        );
    }

    #[test]
    fn overrides_alone_keep_their_order_without_duplicates() {
        let over = kv(&[("Z", "1"), ("A", "2"), ("Z", "3"), ("M", "4")]);
        assert_eq!(merge(&[], &over), kv(&[("A", "2"), ("Z", "3"), ("M", "4")]));
        assert_eq!(merge(&[], &[]), vec![]);
    }

    #[test]
    fn empty_values_and_odd_names_are_ordinary_variables() {
        // An empty value replaces (it does not unset); names are compared exactly.
        let base = kv(&[("HOME", "/root"), ("home", "/x"), ("", "e"), ("A=B", "c")]);
        let over = kv(&[("HOME", ""), ("", "f")]);
        assert_eq!(
            merge(&base, &over),
            kv(&[("home", "/x"), ("A=B", "c"), ("HOME", ""), ("", "f")])
        );
    }

    /// The rule written the obvious (quadratic) way.
    fn reference(base: &[(String, String)], over: &[(String, String)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in base {
            if over.iter().any(|(o, _)| o == k) {
                continue;
            }
            match out.iter_mut().find(|(o, _)| o == k) {
                Some(e) => e.1 = v.clone(),
                None => out.push((k.clone(), v.clone())),
            }
        }
        for (i, (k, v)) in over.iter().enumerate() {
            if !over[i + 1..].iter().any(|(o, _)| o == k) {
                out.push((k.clone(), v.clone()));
            }
        }
        out
    }

    #[test]
    fn agrees_with_the_obvious_rule_on_random_lists() {
        // Small name space so that repeats within and across lists are common.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        for round in 0..500 {
            let mut list = |len: u64| -> Vec<(String, String)> {
                (0..next(len))
                    .map(|_| (format!("K{}", next(12)), format!("v{}", next(1000))))
                    .collect()
            };
            let base = list(20);
            let over = list(20);
            assert_eq!(
                merge(&base, &over),
                reference(&base, &over),
                "round {round}"
            );
        }
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
        // Every entry where the rule puts it: base-only keys, then the overrides.
        assert!(m[..5_000]
            .iter()
            .enumerate()
            .all(|(i, (k, v))| *k == format!("K{i}") && v == "v"));
        assert!(m[5_000..]
            .iter()
            .enumerate()
            .all(|(i, (k, v))| *k == format!("K{}", i + 5_000) && v == "w"));
    }

    #[test]
    fn large_values_pass_through_unchanged() {
        let big = "x".repeat(1 << 20);
        let m = merge(&kv(&[("BIG", "small")]), &[("BIG".into(), big.clone())]);
        assert_eq!(m, vec![("BIG".to_string(), big)]);
    }
}
