// A stand-in for msb's terminal in unit tests.
import type { TerminalIO } from "../src/attach.js";

const enc = new TextEncoder();

/** A fake terminal: stdin chunks given up front (or a never-ending one), raw mode and resize recorded. */
export function fakeTerminal(opts: { stdinIsTTY?: boolean; input?: string[]; endless?: boolean; size?: { rows: number; cols: number } } = {}) {
  const log: string[] = [];
  let resize: (() => void) | undefined;
  let size = opts.size;
  const term: TerminalIO = {
    stdinIsTTY: opts.stdinIsTTY ?? false,
    async *stdin() {
      for (const s of opts.input ?? []) yield enc.encode(s);
      if (opts.endless) await new Promise(() => undefined);
    },
    setRawMode: (raw) => void log.push(`raw ${raw}`),
    size: () => size,
    onResize(listener) {
      resize = listener;
      log.push("watch resize");
      return () => {
        resize = undefined;
        log.push("unwatch resize");
      };
    },
  };
  return {
    term,
    log,
    resizeTo(rows: number, cols: number) {
      size = { rows, cols };
      resize?.();
    },
  };
}

