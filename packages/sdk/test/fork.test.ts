// Unit: what a fork refuses before anything reaches a VM (fork.ts); the fork itself is in
// fork.e2e.test.ts.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { forkRefusal, forkSandbox, pruneStaleForks } from "../src/fork.js";
import { InvalidConfigError, Sandbox, UnsupportedError } from "../src/index.js";

const base = () => Sandbox.builder("p").validate();

describe("fork refusals", () => {
  it("a plain sandbox can be forked; volumes, published ports and secrets cannot", () => {
    expect(forkRefusal(base())).toBeNull();
    expect(forkRefusal(Sandbox.builder("p").volume("/data", (v) => v.tmpfs()).validate())).toMatch(/volumes/);
    expect(forkRefusal(Sandbox.builder("p").port(8080, 80).validate())).toMatch(/publishes ports/);
    expect(forkRefusal(Sandbox.builder("p").secret((s) => s.env("API_KEY").value("k-123").allowHost("api.example.com")).validate())).toMatch(/secrets/);
  });

  it("checks the name, the options and the parent before the parent saves anything", async () => {
    const calls: string[] = [];
    const save = async () => void calls.push("save");
    await expect(forkSandbox(base(), save, "a/b")).rejects.toBeInstanceOf(InvalidConfigError);
    await expect(forkSandbox(base(), save, "ok", { detached: "yes" } as never)).rejects.toThrow(/invalid detached "yes": detached must be a boolean/);
    await expect(forkSandbox(base(), save, "ok", { other: 1 } as never)).rejects.toBeInstanceOf(InvalidConfigError);
    const withPort = Sandbox.builder("p").port(8080, 80).validate();
    await expect(forkSandbox(withPort, save, "ok")).rejects.toBeInstanceOf(UnsupportedError);
    expect(calls).toEqual([]);
  });
});

describe("fork leftovers", () => {
  it("a fork directory left by a process that died is removed later; a fresh one is not", async () => {
    const forks = mkdtempSync(join(tmpdir(), "msb-forks-"));
    try {
      mkdirSync(join(forks, "old.0123456789ab"));
      mkdirSync(join(forks, "new.ba9876543210"));
      const hourAgo = new Date(Date.now() - 60 * 60 * 1000);
      utimesSync(join(forks, "old.0123456789ab"), hourAgo, hourAgo);
      expect(await pruneStaleForks(forks)).toEqual(["old.0123456789ab"]);
      expect(readdirSync(forks)).toEqual(["new.ba9876543210"]);
      expect(await pruneStaleForks(join(forks, "missing"))).toEqual([]);
    } finally {
      rmSync(forks, { recursive: true, force: true });
    }
  });
});
