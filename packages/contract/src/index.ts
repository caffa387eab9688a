/**
 * The contract between microsandbox's Rust core and its TypeScript packages: every shape
 * that crosses the boundary (exec requests and session events, fs ops and entries,
 * metrics, the runtime and network configuration, status values, error codes).
 *
 * `generated.ts` is generated from the Rust types by `crates/contract` and committed; a
 * Rust test fails when it is out of date. Nothing here is written by hand except the
 * type-level helpers below.
 */
export * from "./generated.js";

/**
 * `true` when `A` and `B` are the same type (both ways assignable, optionality included).
 * For compile-time checks: `const _: Same<z.infer<typeof schema>, NetConfig> = true;`.
 */
export type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
