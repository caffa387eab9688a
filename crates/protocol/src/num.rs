//! A `u64` that crosses as a floating point number (`#[serde(with = "num")]`).
//!
//! For counters and sizes that JavaScript reads as a plain `number`: napi turns a u64
//! above 2^32 into a BigInt, a float always into a number. Exact up to 2^53 (9 PB, 285
//! millennia of milliseconds). Reading accepts an integer too, and refuses a negative,
//! fractional or non-finite value, so a hostile peer cannot smuggle one in.

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;

pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*v as f64)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a non-negative whole number")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("negative number"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 as f64; anything at or above it does not fit.
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 18_446_744_073_709_551_616.0 {
                Ok(v as u64)
            } else {
                Err(E::custom(format!("{v} is not a non-negative whole number")))
            }
        }
    }
    d.deserialize_any(V)
}
