// Node 20 has no Symbol.asyncDispose / Symbol.dispose. TypeScript's downlevelled
// `using` / `await using` look them up at run time, and our classes use them as
// computed method names, so they must exist before any other module of the SDK
// is evaluated. Every module that needs them imports this one first.
//
// Symbol.for(...) gives the same symbol that other polyfills (core-js, tslib
// users) install, so objects from different libraries stay compatible.

const S = Symbol as unknown as { asyncDispose?: symbol; dispose?: symbol };
S.asyncDispose ??= Symbol.for("Symbol.asyncDispose");
S.dispose ??= Symbol.for("Symbol.dispose");

export {};
