/**
 * Attaching a remote command to msb's own terminal: output streamed through, stdin
 * forwarded, a pseudo-terminal driven from the local one (raw mode, resizes), signals
 * passed on. Shared by `msb exec` and `msb run`.
 */
import { ExecFailedError, type ExecEvent } from "@microsandbox/sdk";

/** msb's terminal, as far as attaching a command needs it. Injected so tests can fake it. */
export interface TerminalIO {
  /** stdin is a terminal. */
  stdinIsTTY: boolean;
  /** msb's stdin as chunks (only read when it is forwarded). */
  stdin(): AsyncIterable<Uint8Array>;
  /** Put a terminal stdin in raw mode (keys go through as typed) or back. */
  setRawMode(raw: boolean): void;
  /** The local terminal's size, when there is one. */
  size(): { rows: number; cols: number } | undefined;
  /** Call `listener` when the local terminal is resized (SIGWINCH); returns the unsubscribe. */
  onResize(listener: () => void): () => void;
}

function restoreTerminal(): void {
  try {
    if (process.stdin.isTTY) process.stdin.setRawMode(false);
  } catch {
    // stdin already gone
  }
}

/** The process's own terminal. */
export function processTerminal(): TerminalIO {
  return {
    stdinIsTTY: process.stdin.isTTY === true,
    stdin: () => process.stdin,
    setRawMode(raw) {
      if (!process.stdin.isTTY) return;
      process.stdin.setRawMode(raw);
      // Whatever ends msb (even a second SIGTERM, which exits at once), the terminal is restored.
      if (raw) process.once("exit", restoreTerminal);
      else process.off("exit", restoreTerminal);
    },
    size() {
      for (const s of [process.stdout, process.stderr]) {
        if (s.isTTY && s.rows > 0 && s.columns > 0) return { rows: s.rows, cols: s.columns };
      }
      return undefined;
    },
    onResize(listener) {
      process.stdout.on("resize", listener);
      return () => void process.stdout.off("resize", listener);
    },
  };
}

/** The parts of an `ExecHandle` that attaching uses. */
export interface AttachableCommand extends AsyncIterable<ExecEvent> {
  takeStdin?(): { write(data: Uint8Array): Promise<void>; close(): Promise<void> } | null;
  resize?(rows: number, cols: number): Promise<void>;
  signal?(n: number): Promise<void>;
}

/** How to attach. */
export interface AttachPlan {
  /** The command runs on a pseudo-terminal. */
  tty: boolean;
  /** msb's stdin is forwarded to it. */
  forwardStdin: boolean;
  /** The local terminal goes into raw mode while the command runs. */
  raw: boolean;
}

/**
 * Decide from the flags and the terminal: stdin is forwarded with `-i`, `-t`, or
 * whenever it is not a terminal (a pipe or a file: `echo hi | msb exec w -- cat`);
 * raw mode only for `-t` on a terminal stdin.
 */
export function attachPlan(flags: { tty?: boolean; interactive?: boolean }, term: TerminalIO | undefined): AttachPlan {
  const tty = flags.tty === true;
  const stdinIsTTY = term?.stdinIsTTY ?? true;
  return {
    tty,
    forwardStdin: term !== undefined && (tty || flags.interactive === true || !stdinIsTTY),
    raw: term !== undefined && tty && stdinIsTTY,
  };
}

/** Where the command's output goes. */
export interface AttachOutput {
  writeOut(data: Uint8Array): Promise<void>;
  writeErr(data: Uint8Array | string): Promise<void>;
}

/**
 * Run an attached command to its end: stream its output, forward stdin and resizes
 * per `plan`, and resolve to its exit code. The terminal is restored whatever happens.
 */
export async function attach(cmd: AttachableCommand, plan: AttachPlan, term: TerminalIO | undefined, out: AttachOutput): Promise<number> {
  let stopResize: (() => void) | undefined;
  let raw = false;
  let finished = false;
  try {
    if (plan.raw && term) {
      term.setRawMode(true);
      raw = true;
    }
    if (plan.tty && term && cmd.resize) {
      const resize = cmd.resize.bind(cmd);
      stopResize = term.onResize(() => {
        const size = term.size();
        if (size && !finished) resize(size.rows, size.cols).catch(() => undefined);
      });
    }
    if (plan.forwardStdin && term && cmd.takeStdin) {
      const stdin = cmd.takeStdin();
      if (stdin) void (async () => {
        try {
          for await (const chunk of term.stdin()) {
            if (finished) return;
            await stdin.write(chunk);
          }
          if (!finished) await stdin.close();
        } catch {
          // The command exited (or stopped reading): its exit status tells the rest.
        }
      })();
    }
    let exit: number | undefined;
    for await (const ev of cmd) {
      if (ev.kind === "stdout") await out.writeOut(ev.data);
      else if (ev.kind === "stderr") await out.writeErr(ev.data);
      else if (ev.kind === "exited") exit = ev.code;
      else if (ev.kind === "failed") throw new ExecFailedError(ev.reason);
    }
    if (exit === undefined) throw new Error("the command ended without an exit code");
    return exit;
  } finally {
    finished = true;
    stopResize?.();
    if (raw && term) term.setRawMode(false);
  }
}
