// Pull + unpack of the Debian+python image from a local registry, cold cache, against
// `skopeo copy` + `umoci unpack` of the same image, interleaved in the same run.
// Not a pass/fail test: prints medians and the ratio (target <= 1.0).
// Run: npm run bench:pull   (vite-node, because the registry fixtures are TypeScript)
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pullImage } from "@microsandbox/oci";
import { pushFixtures, startRegistry } from "../../test-vms/registry/index.js";

const runs = Number(process.argv[2] ?? 5);
const root = join(import.meta.dirname ?? new URL(".", import.meta.url).pathname, "..", "..");

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

execFileSync("bash", [join(root, "test-vms/registry/build-debian-python.sh")], { stdio: "inherit" });
const reg = await startRegistry("plain");
try {
  await pushFixtures(reg, ["debian-python:latest"]);
  const ref = `${reg.host}/debian-python:latest`;
  const ours: number[] = [];
  const theirs: number[] = [];
  for (let i = 0; i < runs; i++) {
    const home = mkdtempSync(join(tmpdir(), "msb-bench-pull-"));
    try {
      const t0 = performance.now();
      const img = await pullImage(ref, { msbHome: home, policy: "always" });
      ours.push(performance.now() - t0);
      if (i === 0) console.log(`ours: ${img.reference} ${img.digest} -> ${img.rootfs} (${(img.sizeBytes / 1e6).toFixed(1)} MB)`);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
    const dir = mkdtempSync(join(tmpdir(), "msb-bench-skopeo-"));
    try {
      const t0 = performance.now();
      execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${ref}`, `oci:${dir}/layout:latest`]);
      execFileSync("umoci", ["unpack", "--rootless", "--image", `${dir}/layout:latest`, `${dir}/bundle`], { stdio: "ignore" });
      theirs.push(performance.now() - t0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const a = median(ours);
  const b = median(theirs);
  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(" ");
  console.log(`(ours)  pullImage, cold cache, incl. root disk   median ${a.toFixed(0)} ms  [${fmt(ours)}]`);
  console.log(`(base)  skopeo copy + umoci unpack                median ${b.toFixed(0)} ms  [${fmt(theirs)}]`);
  console.log(`ratio ours/base = ${(a / b).toFixed(2)}   (target <= 1.0)`);
} finally {
  await reg.stop();
}
