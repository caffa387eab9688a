// The contract between the Rust core and the SDK: the addon's generated declarations are
// the committed ones, and every code the native side throws becomes its typed error.
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { ERROR_CODES, SANDBOX_STATUSES } from "@microsandbox/contract";
import { InvalidConfigError, MicrosandboxError, RuntimeError } from "../src/index.js";
import { fromNative } from "../src/errors.js";
import { toRecord } from "../src/lifecycle.js";

const root = fileURLToPath(new URL("../../..", import.meta.url));
const git = (...args: string[]) => execFileSync("git", args, { cwd: root, encoding: "utf8" });

describe("the addon's TypeScript declarations", () => {
  it("are committed, and a build of the addon gives exactly the committed file", () => {
    // scripts/setup.sh (napi build) rewrites packages/core-native/index.d.ts from the
    // Rust sources; a difference from the committed file is drift between the two.
    expect(git("ls-files", "packages/core-native/index.d.ts").trim()).toBe("packages/core-native/index.d.ts");
    const diff = git("diff", "--stat", "--", "packages/core-native/index.d.ts");
    expect(diff, "rebuild with `npm run setup` and commit packages/core-native/index.d.ts").toBe("");
  });
});

describe("native error codes", () => {
  it("each maps to its typed error with its code and the text after the prefix", () => {
    for (const code of ERROR_CODES) {
      const e = fromNative(new Error(`${code}: something: went wrong\nsecond line`));
      expect(e).toBeInstanceOf(MicrosandboxError);
      expect(e.code).toBe(code);
      if (code !== "runtime") expect(e).not.toBeInstanceOf(RuntimeError);
      expect(e.message).toBe("something: went wrong\nsecond line");
    }
    const bad = fromNative(new Error("invalidConfig: memoryMib: must be at least 128"));
    expect(bad).toBeInstanceOf(InvalidConfigError);
    expect((bad as InvalidConfigError).field).toBe("memoryMib");
  });

  it("an unknown code or no prefix is a RuntimeError keeping the whole message", () => {
    for (const m of ["bogusCode: x", "no prefix at all", ": empty code"]) {
      const e = fromNative(new Error(m));
      expect(e).toBeInstanceOf(RuntimeError);
      expect(e.message).toBe(m);
    }
  });
});

describe("status values", () => {
  it("every status of the store is a status the SDK accepts", () => {
    for (const status of SANDBOX_STATUSES) {
      const r = toRecord({ name: "s", status, configJson: "{}", createdAt: 1, updatedAt: 2 });
      expect(r.status).toBe(status);
    }
  });
});
