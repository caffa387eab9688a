import { describe, expect, it } from "vitest";
import { PullProgressView, formatBytes } from "../src/progress.js";
import { formatImages, table } from "../src/images.js";

const D1 = "sha256:" + "a".repeat(64);
const D2 = "sha256:" + "b".repeat(64);

function feed(isTTY: boolean): string {
  let out = "";
  const v = new PullProgressView({ write: (s) => void (out += s), isTTY, columns: 100 });
  v.update({ phase: "resolving", reference: "r/x:1" });
  v.update({ phase: "layer", digest: D1, index: 0, count: 2, doneBytes: 0, totalBytes: 2048, cached: false });
  v.update({ phase: "layer", digest: D1, index: 0, count: 2, doneBytes: 1024, totalBytes: 2048, cached: false });
  v.update({ phase: "layer", digest: D1, index: 0, count: 2, doneBytes: 2048, totalBytes: 2048, cached: false });
  v.update({ phase: "layer", digest: D2, index: 1, count: 2, doneBytes: 10, totalBytes: 10, cached: true });
  v.update({ phase: "resolved", reference: "r/x:1", digest: "sha256:" + "c".repeat(64), layerCount: 2, totalBytes: 2058 });
  v.update({ phase: "unpacking", digest: D1, diffId: D2, index: 0, count: 2 });
  v.update({ phase: "building", reference: "r/x:1" });
  v.update({ phase: "complete", reference: "r/x:1", digest: "sha256:" + "c".repeat(64) });
  return out;
}

describe("pull progress", () => {
  it("prints one plain line per step when not on a TTY", () => {
    expect(feed(false).split("\n")).toEqual([
      "resolving r/x:1",
      "layer 1/2 aaaaaaaaaaaa: downloaded 2.0 KiB",
      "layer 2/2 bbbbbbbbbbbb: cached 10 B",
      "unpacking layer 1/2 aaaaaaaaaaaa",
      "building root disk for r/x:1",
      `pulled r/x:1 (sha256:${"c".repeat(64)})`,
      "",
    ]);
  });

  it("redraws bars in place on a TTY", () => {
    const out = feed(true);
    expect(out).toContain("\x1b[2K");
    expect(out).toMatch(/\x1b\[\d+F/); // cursor moved back up over the previous frame
    const lastFrame = out.slice(out.lastIndexOf("\x1b[2Kaaaaaaaaaaaa"));
    expect(lastFrame).toContain("done");
    expect(lastFrame).toContain("bbbbbbbbbbbb");
    expect(lastFrame).toContain("cached");
    expect(lastFrame).toContain("pulled r/x:1");
  });

  it("formats sizes and tables", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(5 * 1024 * 1024 * 1024)).toBe("5.0 GiB");
    expect(table(["A", "BB"], [["xxx", "y"]])).toBe("A    BB\nxxx  y\n");
    const now = new Date("2026-01-01T00:10:00Z");
    const imgs = [{ reference: "r/x:1", digest: D1, sizeBytes: 2048, pulledAt: new Date("2026-01-01T00:00:00Z"), platform: "linux/amd64", layerCount: 2 }];
    expect(formatImages(imgs, false, now)).toBe("REFERENCE  DIGEST        SIZE     PULLED\nr/x:1      aaaaaaaaaaaa  2.0 KiB  10 minutes ago\n");
    expect(JSON.parse(formatImages(imgs, true))).toEqual([{ ...imgs[0], pulledAt: "2026-01-01T00:00:00.000Z" }]);
  });
});
