// End-to-end: two sandboxes running at the same time, each its own VM.
import { afterAll, expect, it } from "vitest";
import { Sandbox } from "../src/index.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();

const sandboxes: Sandbox[] = [];
afterAll(async () => {
  await cleanup(...sandboxes);
});

it("runs two sandboxes at once, each with its own hostname", async () => {
  const [a, b] = await Promise.all([
    Sandbox.builder("e2e-two-a").hostname("alpha").create(),
    Sandbox.builder("e2e-two-b").hostname("bravo").create(),
  ]);
  sandboxes.push(a, b);
  expect(a.runtimePid).not.toBe(b.runtimePid);
  const [ha, hb] = await Promise.all([a.exec("hostname"), b.exec("hostname")]);
  expect(ha.stdout()).toBe("alpha\n");
  expect(hb.stdout()).toBe("bravo\n");
  // commands in flight on both at once
  const [oa, ob] = await Promise.all([a.shell("sleep 1; echo from-a"), b.shell("sleep 1; echo from-b")]);
  expect(oa.stdout()).toBe("from-a\n");
  expect(ob.stdout()).toBe("from-b\n");
  // and several at once on one sandbox
  const many = await Promise.all([1, 2, 3, 4].map((i) => a.shell(`echo ${i}`)));
  expect(many.map((o) => o.stdout())).toEqual(["1\n", "2\n", "3\n", "4\n"]);
});
