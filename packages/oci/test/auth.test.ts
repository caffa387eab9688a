import { describe, expect, it } from "vitest";
import { TokenCache, basicHeader, parseChallenges } from "../src/auth.js";

describe("parseChallenges", () => {
  it("parses a Bearer challenge with quoted params", () => {
    expect(
      parseChallenges('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/alpine:pull"'),
    ).toEqual([
      {
        scheme: "bearer",
        params: { realm: "https://auth.example/token", service: "registry.example", scope: "repository:library/alpine:pull" },
      },
    ]);
  });
  it("keeps commas inside quoted values and handles escapes and spaces", () => {
    const [c] = parseChallenges('Bearer realm="http://h/t", scope="repository:a/b:pull,push" , error="insufficient_scope", x="a\\"b"');
    expect(c!.params.scope).toBe("repository:a/b:pull,push");
    expect(c!.params.error).toBe("insufficient_scope");
    expect(c!.params.x).toBe('a"b');
  });
  it("parses Basic and unquoted values, case-insensitive scheme and keys", () => {
    expect(parseChallenges("basic Realm=registry")).toEqual([{ scheme: "basic", params: { realm: "registry" } }]);
  });
  it("parses several challenges in one header", () => {
    const cs = parseChallenges('Basic realm="x", Bearer realm="https://a/t",service="s"');
    expect(cs.map((c) => c.scheme)).toEqual(["basic", "bearer"]);
    expect(cs[1]!.params).toEqual({ realm: "https://a/t", service: "s" });
  });
  it("returns nothing for an empty header", () => expect(parseChallenges("")).toEqual([]));
});

describe("basic header and token cache", () => {
  it("encodes Basic credentials", () => expect(basicHeader({ kind: "basic", username: "u", password: "p:w" })).toBe("Basic dTpwOnc="));
  it("caches tokens per key until shortly before they expire", () => {
    const t = new TokenCache();
    const k = TokenCache.key({ realm: "r", service: "s" }, "repository:a:pull", undefined);
    const k2 = TokenCache.key({ realm: "r", service: "s" }, "repository:b:pull", undefined);
    t.set(k, "tok", 300, undefined, 1_000_000);
    expect(t.get(k, 1_000_000 + 200_000)).toBe("tok");
    expect(t.get(k2, 1_000_000)).toBeUndefined();
    expect(t.get(k, 1_000_000 + 275_000)).toBeUndefined(); // within 30 s of expiry
  });
  it("defaults to 60 s", () => {
    const t = new TokenCache();
    t.set("k", "tok", undefined, undefined, 0);
    expect(t.get("k", 20_000)).toBe("tok");
    expect(t.get("k", 31_000)).toBeUndefined();
  });
});
