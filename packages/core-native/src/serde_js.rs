//! Contract types (plain serde types from crates/protocol and crates/contract) as napi
//! arguments and results: a JS value is deserialized straight into the Rust type, and a
//! Rust value serialized straight into a JS value (byte fields become Buffers), so the
//! addon declares none of these shapes itself. The TypeScript declarations of the
//! functions name the generated types (`ts_args_type` / `ts_return_type`).

use napi::bindgen_prelude::{FromNapiValue, ToNapiValue, TypeName, Unknown, ValueType};
use napi::{sys, Env, JsValue, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An argument deserialized from a JS value (numbers or BigInts for 64-bit integers).
pub struct FromJs<T>(pub T);

impl<T: DeserializeOwned> FromNapiValue for FromJs<T> {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> Result<Self> {
        let e = Env::from_raw(env);
        // SAFETY: env and value come from napi for this call.
        let v = unsafe { Unknown::from_napi_value(env, value)? };
        e.from_js_value(v).map(FromJs)
    }
}

impl<T> TypeName for FromJs<T> {
    fn type_name() -> &'static str {
        "Object"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

/// A result serialized into a JS value.
pub struct ToJs<T>(pub T);

impl<T: Serialize> ToNapiValue for ToJs<T> {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let e = Env::from_raw(env);
        Ok(e.to_js_value(&val.0)?.raw())
    }
}

impl<T> TypeName for ToJs<T> {
    fn type_name() -> &'static str {
        "Object"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}
