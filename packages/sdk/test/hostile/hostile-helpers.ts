// Shared checks of the hostile-guest suite: a neighbour sandbox that must keep working
// while another one attacks, and resident memory of host processes.
import { readFileSync } from "node:fs";
import { expect } from "vitest";
import type { Sandbox } from "../../src/index.js";
import { within } from "../e2e-helpers.js";

/** Resident memory of a host process, KiB. */
export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

let round = 0;

/** The neighbour answers an exec and an fs round trip, promptly and exactly. */
export async function expectNeighbourFine(neighbour: Sandbox): Promise<void> {
  const n = ++round;
  const out = await within(neighbour.exec("echo", [`still here ${n}`]), 30_000, "neighbour exec");
  expect([out.code, out.stdout()]).toEqual([0, `still here ${n}\n`]);
  const data = `round ${n} `.repeat(1000);
  await within(neighbour.fs().write(`/tmp/neighbour-${n}`, data), 30_000, "neighbour fs write");
  expect(await within(neighbour.fs().readToString(`/tmp/neighbour-${n}`), 30_000, "neighbour fs read")).toBe(data);
}
