/**
 * `sb.fork(name)`: a new sandbox with the memory and disk state of a running one at this
 * moment, independent from then on. The parent's runtime stops its vCPUs, saves its memory
 * and devices and copies its writable disk into `$MSB_HOME/forks/<name>.<random>`, and
 * runs on (crates/runtime/src/fork.rs); the child's runtime restores that instead of
 * booting, on its own disk copy, network stack and request ids, and reseeds the guest's RNG
 * and sets its clock and hostname before any command of the child runs.
 */
import { randomBytes } from "node:crypto";
import { lstat, mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { check, msbHome, nameSchema, type SandboxConfig } from "./config.js";
import { SandboxAlreadyExistsError, UnsupportedError } from "./errors.js";
import { launch } from "./launch.js";
import { findRecord } from "./lifecycle.js";
import { callNative, native, type NativeAgentClient } from "./native.js";
import type { Sandbox } from "./sandbox.js";

/** Options of {@link Sandbox.fork}. */
export interface ForkOptions {
  /**
   * `true`: the fork keeps running after this process exits (as `createDetached()`);
   * default `false`: attached (stopped when this process exits, as `create()`).
   */
  detached?: boolean;
}

const optionsSchema = z.object({ detached: z.unknown().optional() }, { error: "must be an object" }).strict();
const detachedSchema = z.boolean({ error: "must be a boolean" }).optional();

/** A fork's directory older than this was left by a process that died halfway. */
const STALE_FORK_MS = 15 * 60 * 1000;

/**
 * @internal Remove what forks left under `forks/` when their process died before its
 * cleanup (a save is seconds old at most when the fork starts; these are much older).
 */
export async function pruneStaleForks(forks: string, now: number = Date.now()): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(forks).catch(() => [] as string[])) {
    const p = join(forks, name);
    const st = await lstat(p).catch(() => undefined);
    if (st === undefined || now - st.mtimeMs < STALE_FORK_MS) continue;
    await rm(p, { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

/** What of a sandbox a fork cannot carry over, or null. */
export function forkRefusal(config: SandboxConfig): string | null {
  if (config.volumes.length > 0) return "it has volumes (a fork would share or lose them)";
  if ((config.network?.ports.length ?? 0) > 0) return "it publishes ports (the host ports are the parent's)";
  if ((config.network?.secrets?.length ?? 0) > 0) return "it has secrets (their values are not kept to hand on)";
  return null;
}

/**
 * @internal The work of `sb.fork(name, options)`: `save` is the parent's `client.fork(dir)`
 * through its handle (so that a failure there reads as the parent's).
 */
export async function forkSandbox(
  parent: SandboxConfig,
  save: (f: (c: NativeAgentClient) => Promise<void>) => Promise<void>,
  name: string,
  options: ForkOptions = {},
): Promise<Sandbox> {
  const n = check(nameSchema, "name", name);
  const o = check(optionsSchema, "options", options, "fork options");
  const detached = check(detachedSchema, "detached", o.detached);
  const why = forkRefusal(parent);
  if (why !== null) throw new UnsupportedError(`sandbox ${parent.name} cannot be forked: ${why}`);
  const home = msbHome();
  const binding = await callNative(() => native());
  if ((await findRecord(binding, home, n)) !== undefined) throw new SandboxAlreadyExistsError(`a sandbox named ${n} already exists`);
  const forks = join(home, "forks");
  await mkdir(forks, { recursive: true, mode: 0o700 });
  await pruneStaleForks(forks);
  const dir = join(forks, `${n}.${randomBytes(6).toString("hex")}`);
  await mkdir(dir, { mode: 0o700 });
  try {
    await save((c) => c.fork(dir));
    // The parent's configuration under the fork's name; its hostname is its own.
    const config: SandboxConfig = { ...parent, name: n, hostname: null, labels: { ...parent.labels } };
    return await launch(config, {
      mode: "create",
      attached: detached !== true,
      ephemeral: config.ephemeral,
      upperSource: join(dir, "upper.ext4"),
      forkFrom: dir,
    });
  } finally {
    // The child's runtime removes it once loaded; this covers every failure before.
    await rm(dir, { recursive: true, force: true });
  }
}
