// An in-process registry (OCI distribution API subset) on 127.0.0.1 for unit tests:
// manifests by tag/digest, blobs, Basic or Bearer auth, and fault injection.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createTlsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { BuiltImage } from "./images.js";

export type FakeAuth =
  | { kind: "none" }
  | { kind: "basic"; username: string; password: string }
  | { kind: "bearer"; username?: string; password?: string; anonymous?: boolean };

export interface RequestLog {
  method: string;
  url: string;
  accept?: string | undefined;
  authorization?: string | undefined;
}

export interface FakeRegistryOptions {
  auth?: FakeAuth;
  /** Serve HTTPS with this key and certificate (PEM). */
  tls?: { key: string; cert: string };
  /** Address to listen on (default 127.0.0.1). */
  listen?: string;
}

interface Doc {
  body: Buffer;
  mediaType: string;
}

export class FakeRegistry {
  readonly server: Server;
  readonly log: RequestLog[] = [];
  private readonly repos = new Map<string, Map<string, Doc>>();
  private readonly blobs = new Map<string, Buffer>();
  auth: FakeAuth;
  /** Blob digest -> replacement bytes sent instead (corruption). */
  readonly corrupt = new Map<string, Buffer>();
  /** Blob digest -> ms to wait between 16 KiB chunks (slow streaming). */
  readonly slow = new Map<string, number>();
  /** Blob digest -> destroy the socket after this many bytes. */
  readonly cutAfter = new Map<string, number>();
  /** Blob digest -> redirect to <base>/redirected/<digest> ("" = same origin). */
  readonly redirect = new Map<string, string>();
  tokensIssued = 0;
  port = 0;
  readonly listenAddr: string;
  readonly scheme: "http" | "https";

  constructor(opts: FakeRegistryOptions = {}) {
    this.auth = opts.auth ?? { kind: "none" };
    this.listenAddr = opts.listen ?? "127.0.0.1";
    this.scheme = opts.tls ? "https" : "http";
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((e: unknown) => {
        if (!res.headersSent) res.writeHead(500);
        res.end(String(e));
      });
    };
    this.server = opts.tls ? createTlsServer({ key: opts.tls.key, cert: opts.tls.cert }, handler) : createServer(handler);
  }

  async start(port = 0): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(port, this.listenAddr, resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  get host(): string {
    return `${this.listenAddr}:${this.port}`;
  }

  ref(repo: string, tag = "latest"): string {
    return `${this.host}/${repo}:${tag}`;
  }

  addImage(repo: string, tag: string | undefined, img: BuiltImage): void {
    for (const [d, b] of img.blobs) this.blobs.set(d, b);
    this.addManifest(repo, tag, { body: img.manifest, mediaType: img.mediaType }, img.manifestDigest);
  }

  addManifest(repo: string, tag: string | undefined, doc: Doc, digest: string): void {
    let m = this.repos.get(repo);
    if (!m) this.repos.set(repo, (m = new Map()));
    m.set(digest, doc);
    if (tag) m.set(tag, doc);
  }

  private authorized(req: IncomingMessage): boolean {
    const a = this.auth;
    const h = req.headers.authorization ?? "";
    if (a.kind === "none") return true;
    if (a.kind === "basic") return h === `Basic ${Buffer.from(`${a.username}:${a.password}`).toString("base64")}`;
    return h === "Bearer good-token";
  }

  private challenge(res: ServerResponse, scope?: string): void {
    const a = this.auth;
    if (a.kind === "basic") res.setHeader("www-authenticate", 'Basic realm="fake"');
    else
      res.setHeader(
        "www-authenticate",
        `Bearer realm="${this.scheme}://${this.host}/token",service="fake-registry"${scope ? `,scope="${scope}"` : ""}`,
      );
    res.writeHead(401, { "content-type": "application/json" });
    res.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", `${this.scheme}://${this.host}`);
    this.log.push({ method: req.method ?? "GET", url: url.pathname + url.search, accept: req.headers.accept, authorization: req.headers.authorization });

    if (url.pathname === "/token") {
      const a = this.auth;
      if (a.kind !== "bearer") return void res.writeHead(404).end();
      const h = req.headers.authorization;
      if (h) {
        if (h !== `Basic ${Buffer.from(`${a.username}:${a.password}`).toString("base64")}`) {
          res.writeHead(401, { "content-type": "application/json" });
          return void res.end(JSON.stringify({ details: "invalid credentials" }));
        }
      } else if (!a.anonymous) {
        res.writeHead(401);
        return void res.end();
      }
      this.tokensIssued++;
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end(JSON.stringify({ token: "good-token", expires_in: 300 }));
    }

    if (url.pathname === "/v2/" || url.pathname === "/v2") {
      if (!this.authorized(req)) return this.challenge(res);
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end("{}");
    }

    const redirected = /^\/redirected\/(sha256:[a-f0-9]{64})$/.exec(url.pathname);
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
    if (!m && !redirected) return void res.writeHead(404).end();
    const [, repo, kind, id] = m ?? ["", "", "blobs", redirected![1]!];
    if (!redirected && !this.authorized(req)) return this.challenge(res, `repository:${repo}:pull`);

    if (kind === "manifests") {
      const doc = this.repos.get(repo!)?.get(id!);
      if (!doc) {
        res.writeHead(404, { "content-type": "application/json" });
        const code = this.repos.has(repo!) ? "MANIFEST_UNKNOWN" : "NAME_UNKNOWN";
        return void res.end(JSON.stringify({ errors: [{ code, message: `${code.toLowerCase()}` }] }));
      }
      res.writeHead(200, { "content-type": doc.mediaType, "content-length": doc.body.length });
      return void res.end(doc.body);
    }

    const digest = id!;
    let blob = this.blobs.get(digest);
    if (!blob) {
      res.writeHead(404, { "content-type": "application/json" });
      return void res.end(JSON.stringify({ errors: [{ code: "BLOB_UNKNOWN", message: "blob unknown" }] }));
    }
    if (!redirected && this.redirect.has(digest)) {
      res.writeHead(307, { location: `${this.redirect.get(digest)}/redirected/${digest}` });
      return void res.end();
    }
    blob = this.corrupt.get(digest) ?? blob;
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": blob.length });
    const delay = this.slow.get(digest) ?? 0;
    const cut = this.cutAfter.get(digest);
    for (let off = 0; off < blob.length; off += 16384) {
      const end = Math.min(off + 16384, blob.length);
      if (cut !== undefined && end > cut) {
        res.write(blob.subarray(off, cut));
        await new Promise((r) => setTimeout(r, 20));
        res.socket?.destroy();
        return;
      }
      if (!res.write(blob.subarray(off, end))) await new Promise((r) => res.once("drain", r));
      if (delay) await new Promise((r) => setTimeout(r, delay));
      if (res.destroyed) return;
    }
    res.end();
  }
}
