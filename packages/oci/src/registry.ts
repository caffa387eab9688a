/**
 * A small client for the OCI distribution API (registry v2): scheme discovery (HTTPS,
 * plain HTTP only for loopback or insecure registries), Basic and Bearer-token auth,
 * manifests and blobs. Built on undici's `request` so that TLS (extra CA, unverified
 * TLS for insecure registries) is set per pull through an Agent.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { rootCertificates } from "node:tls";
import { Agent, EnvHttpProxyAgent, request, type Dispatcher } from "undici";
import { basicHeader, parseChallenges, tokenCache, TokenCache, type Challenge, type RegistryAuth } from "./auth.js";
import { OciError, abortError, describeError, errorCode } from "./errors.js";
import { apiHost, isLoopbackRegistry, registryHostname, type Reference } from "./reference.js";

export const MEDIA = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerV1: "application/vnd.docker.distribution.manifest.v1+json",
  dockerV1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
} as const;

export const MANIFEST_ACCEPT = [MEDIA.ociIndex, MEDIA.dockerList, MEDIA.ociManifest, MEDIA.dockerManifest].join(", ");

const MAX_MANIFEST_BYTES = 4 << 20;
const MAX_REDIRECTS = 5;
const USER_AGENT = "microsandbox-oci/0.1";

/** TLS errors that mean "the certificate is not trusted" (no point in trying plain HTTP). */
const CERT_ERRORS = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

const SYSTEM_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

export interface ClientOptions {
  auth?: RegistryAuth | undefined;
  /** Allow plain HTTP and unverified TLS for this registry. */
  insecure?: boolean | undefined;
  /** Extra CA certificate(s), PEM. */
  caFile?: string | undefined;
  signal?: AbortSignal | undefined;
  /** Token cache (tests pass their own). */
  tokens?: TokenCache;
}

export interface FetchedManifest {
  body: Buffer;
  mediaType: string;
  digest: string;
}

interface RawResponse {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData["body"];
}

function header(res: RawResponse, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v.join(", ") : v;
}

async function drain(res: RawResponse): Promise<void> {
  try {
    await res.body.dump({ limit: 1 << 20 });
  } catch {
    /* the connection is dropped instead */
  }
}

async function readLimited(res: RawResponse, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res.body) {
    const b = c as Buffer;
    n += b.length;
    if (n > limit) {
      res.body.destroy();
      throw new OciError("image", `${what} is larger than ${limit} bytes`);
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

/** The `errors` array of a registry error body, as "CODE: message" strings. */
async function registryErrors(res: RawResponse): Promise<{ codes: string[]; text: string }> {
  let raw = "";
  try {
    raw = (await readLimited(res, 64 << 10, "error body")).toString("utf8");
  } catch {
    return { codes: [], text: "" };
  }
  try {
    const j = JSON.parse(raw) as { errors?: { code?: unknown; message?: unknown }[] };
    if (Array.isArray(j.errors)) {
      const codes = j.errors.map((e) => String(e.code ?? ""));
      const text = j.errors.map((e) => `${String(e.code ?? "")}: ${String(e.message ?? "")}`).join("; ");
      return { codes, text };
    }
  } catch {
    /* not JSON */
  }
  return { codes: [], text: raw.trim().slice(0, 200) };
}

export class RegistryClient {
  readonly registry: string;
  readonly repository: string;
  /** host[:port] requests go to (Docker Hub's API host for docker.io). */
  readonly host: string;
  private readonly auth: RegistryAuth | undefined;
  private readonly insecure: boolean;
  private readonly loopback: boolean;
  private readonly signal: AbortSignal | undefined;
  private readonly tokens: TokenCache;
  private readonly agent: Dispatcher;
  private base: string | undefined;
  private authorization: string | undefined;
  /** Set once credentials went out with a request: a later 401 means they were rejected. */
  private usedBasic = false;

  constructor(ref: Reference, opts: ClientOptions = {}) {
    this.registry = ref.registry;
    this.repository = ref.repository;
    this.host = apiHost(ref.registry);
    this.auth = opts.auth;
    this.insecure = opts.insecure ?? false;
    this.loopback = isLoopbackRegistry(ref.registry);
    this.signal = opts.signal;
    this.tokens = opts.tokens ?? tokenCache;
    let ca: string[] | undefined;
    if (opts.caFile) {
      let pem: string;
      try {
        pem = readFileSync(opts.caFile, "utf8");
      } catch (e) {
        throw new OciError("invalidConfig", `cannot read the CA file ${opts.caFile}: ${describeError(e)}`, {
          field: "caFile",
          cause: e,
        });
      }
      if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
        throw new OciError("invalidConfig", `the CA file ${opts.caFile} holds no PEM certificate`, { field: "caFile" });
      }
      ca = [...rootCertificates, ...systemBundle(), pem];
    }
    const tlsOpts = { ...(ca ? { ca } : {}), rejectUnauthorized: !this.insecure };
    const agentOpts = {
      connect: { ...tlsOpts, timeout: 15_000 },
      headersTimeout: 60_000,
      bodyTimeout: 60_000,
      keepAliveTimeout: 10_000,
    };
    // HTTP(S)_PROXY / NO_PROXY are honoured, as by Docker; never for loopback registries.
    const proxied = !this.loopback && ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"].some((v) => process.env[v]);
    this.agent = proxied ? new EnvHttpProxyAgent({ ...agentOpts, requestTls: tlsOpts }) : new Agent(agentOpts);
  }

  async close(): Promise<void> {
    await this.agent.close().catch(() => undefined);
  }

  private allowHttp(): boolean {
    return this.insecure || this.loopback;
  }

  private async raw(url: string, headers: Record<string, string>, method: "GET" | "HEAD" = "GET"): Promise<RawResponse> {
    if (this.signal?.aborted) throw abortError(this.signal);
    const res = await request(url, {
      dispatcher: this.agent,
      method,
      headers: { "user-agent": USER_AGENT, ...headers },
      signal: this.signal ?? null,
    });
    return res as RawResponse;
  }

  /**
   * Find out how to talk to the registry: HTTPS, or (loopback / insecure registries
   * only) plain HTTP when HTTPS does not connect. Also learns the auth challenge.
   */
  async ping(): Promise<void> {
    if (this.base) return;
    const https = `https://${this.host}`;
    let res: RawResponse;
    try {
      res = await this.raw(`${https}/v2/`, {});
      this.base = https;
    } catch (e) {
      if (this.signal?.aborted) throw abortError(this.signal);
      const code = errorCode(e);
      if (code && CERT_ERRORS.has(code)) {
        throw new OciError(
          "image",
          `the TLS certificate of registry ${this.registry} is not trusted (${code}): give its CA certificate (caFile), ` +
            `or mark the registry insecure`,
          { cause: e },
        );
      }
      if (!this.allowHttp()) {
        throw new OciError("image", `cannot reach registry ${this.registry} over HTTPS: ${describeError(e)}`, { cause: e });
      }
      const http = `http://${this.host}`;
      try {
        res = await this.raw(`${http}/v2/`, {});
        this.base = http;
      } catch (e2) {
        if (this.signal?.aborted) throw abortError(this.signal);
        throw new OciError(
          "image",
          `cannot reach registry ${this.registry}: HTTPS: ${describeError(e)}; HTTP: ${describeError(e2)}`,
          { cause: e2 },
        );
      }
    }
    if (res.statusCode === 401) {
      const challenges = parseChallenges(header(res, "www-authenticate") ?? "");
      await drain(res);
      try {
        await this.authenticate(challenges);
      } catch (e) {
        // Without credentials, carry on anonymously: some registries guard /v2/ but
        // serve public repositories; a 401 on the real request says what is missing.
        if (this.auth || !(e instanceof OciError) || e.code !== "registryAuth") throw e;
      }
      return;
    }
    await drain(res);
  }

  /** Get credentials for the challenges: a Bearer token, or Basic. */
  private async authenticate(challenges: Challenge[]): Promise<void> {
    const bearer = challenges.find((c) => c.scheme === "bearer");
    if (bearer) {
      this.authorization = `Bearer ${await this.fetchToken(bearer)}`;
      return;
    }
    const basic = challenges.find((c) => c.scheme === "basic");
    if (basic || challenges.length === 0) {
      if (!this.auth) {
        throw new OciError(
          "registryAuth",
          `registry ${this.registry} requires authentication to pull ${this.repository}: give credentials (registry auth)`,
        );
      }
      this.authorization = basicHeader(this.auth);
      this.usedBasic = true;
      return;
    }
    throw new OciError(
      "registryAuth",
      `registry ${this.registry} asks for an unsupported authentication scheme (${challenges.map((c) => c.scheme).join(", ")})`,
    );
  }

  private async fetchToken(ch: Challenge): Promise<string> {
    const realm = ch.params.realm;
    if (!realm) throw new OciError("registryAuth", `registry ${this.registry} sent a Bearer challenge without a realm`);
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new OciError("registryAuth", `registry ${this.registry} sent an invalid token realm "${realm}"`);
    }
    if (url.protocol !== "https:" && !(url.protocol === "http:" && (this.insecure || isLoopbackRegistry(url.host)))) {
      throw new OciError(
        "registryAuth",
        `registry ${this.registry} points to the token server ${realm}, which is not HTTPS; mark the registry insecure to allow it`,
      );
    }
    const scope = ch.params.scope || `repository:${this.repository}:pull`;
    const key = TokenCache.key(ch.params, scope, this.auth?.username);
    const cached = this.tokens.get(key);
    if (cached) return cached;
    if (ch.params.service) url.searchParams.set("service", ch.params.service);
    for (const s of scope.split(" ")) if (s) url.searchParams.append("scope", s);
    const headers: Record<string, string> = {};
    if (this.auth) headers.authorization = basicHeader(this.auth);
    let res: RawResponse;
    try {
      res = await this.raw(url.toString(), headers);
    } catch (e) {
      if (this.signal?.aborted) throw abortError(this.signal);
      throw new OciError("registryAuth", `cannot reach the token server ${url.origin} of registry ${this.registry}: ${describeError(e)}`, {
        cause: e,
      });
    }
    if (res.statusCode === 401 || res.statusCode === 403) {
      const { text } = await registryErrors(res);
      if (this.auth) {
        throw new OciError(
          "registryAuth",
          `the credentials for user "${this.auth.username}" were rejected by ${this.registry} (token server ${url.origin}: HTTP ${res.statusCode}${text ? `, ${text}` : ""})`,
        );
      }
      throw new OciError(
        "registryAuth",
        `registry ${this.registry} does not allow anonymous pulls of ${this.repository} (token server: HTTP ${res.statusCode}): give credentials`,
      );
    }
    if (res.statusCode !== 200) {
      const { text } = await registryErrors(res);
      throw new OciError("registryAuth", `the token server ${url.origin} of registry ${this.registry} answered HTTP ${res.statusCode}${text ? `: ${text}` : ""}`);
    }
    let j: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown };
    try {
      j = JSON.parse((await readLimited(res, 1 << 20, "token response")).toString("utf8")) as typeof j;
    } catch (e) {
      throw new OciError("registryAuth", `the token server ${url.origin} of registry ${this.registry} sent an invalid answer: ${describeError(e)}`);
    }
    const token = typeof j.token === "string" && j.token ? j.token : typeof j.access_token === "string" ? j.access_token : "";
    if (!token) throw new OciError("registryAuth", `the token server ${url.origin} of registry ${this.registry} sent no token`);
    this.tokens.set(
      key,
      token,
      typeof j.expires_in === "number" ? j.expires_in : undefined,
      typeof j.issued_at === "string" ? j.issued_at : undefined,
    );
    return token;
  }

  /**
   * GET a registry path with auth: on 401, authenticate from the challenge and retry
   * once. Redirects are followed by hand (blobs often live on another host), and the
   * Authorization header is only sent to the registry's own origin.
   */
  async get(path: string, headers: Record<string, string>, what: string): Promise<RawResponse> {
    await this.ping();
    const base = this.base!;
    for (let attempt = 0; ; attempt++) {
      const h = { ...headers };
      if (this.authorization) h.authorization = this.authorization;
      let res = await this.send(`${base}${path}`, h, what);
      let url = `${base}${path}`;
      for (let hops = 0; res.statusCode >= 300 && res.statusCode < 400 && res.statusCode !== 304; hops++) {
        const loc = header(res, "location");
        await drain(res);
        if (!loc || hops >= MAX_REDIRECTS) {
          throw new OciError("image", `registry ${this.registry}: too many or broken redirects for ${what}`);
        }
        const next = new URL(loc, url);
        const sameOrigin = next.origin === new URL(base).origin;
        const nh = { ...headers };
        if (sameOrigin && this.authorization) nh.authorization = this.authorization;
        url = next.toString();
        res = await this.send(url, nh, what);
      }
      if (res.statusCode === 401 && attempt === 0) {
        const challenges = parseChallenges(header(res, "www-authenticate") ?? "");
        await drain(res);
        if (this.usedBasic) throw this.rejected();
        await this.authenticate(challenges);
        continue;
      }
      if (res.statusCode === 401 || res.statusCode === 403) {
        const challenges = parseChallenges(header(res, "www-authenticate") ?? "");
        const { text, codes } = await registryErrors(res);
        const insufficient = challenges.some((c) => c.params.error === "insufficient_scope") || codes.includes("DENIED");
        if (this.usedBasic) throw this.rejected();
        if (!this.auth && (insufficient || res.statusCode === 401)) {
          throw new OciError(
            "imageNotFound",
            `pull access denied for ${this.registry}/${this.repository}: the repository does not exist or needs credentials (${what}: HTTP ${res.statusCode}${text ? `, ${text}` : ""})`,
          );
        }
        throw new OciError(
          "registryAuth",
          `registry ${this.registry} refused access to ${this.repository}${this.auth ? ` for user "${this.auth.username}"` : ""} (${what}: HTTP ${res.statusCode}${text ? `, ${text}` : ""})`,
        );
      }
      return res;
    }
  }

  private rejected(): OciError {
    return new OciError(
      "registryAuth",
      `the credentials for user "${this.auth?.username ?? ""}" were rejected by ${this.registry} (HTTP 401): check the username and password`,
    );
  }

  private async send(url: string, headers: Record<string, string>, what: string): Promise<RawResponse> {
    try {
      return await this.raw(url, headers);
    } catch (e) {
      if (this.signal?.aborted) throw abortError(this.signal);
      throw new OciError("image", `registry ${this.registry}: request for ${what} failed: ${describeError(e)}`, { cause: e });
    }
  }

  /** Fetch a manifest (or index) by tag or digest; the digest is computed over the bytes. */
  async getManifest(tagOrDigest: string): Promise<FetchedManifest> {
    const what = `manifest ${this.repository}:${tagOrDigest}`.replace(":sha256:", "@sha256:");
    const res = await this.get(`/v2/${this.repository}/manifests/${tagOrDigest}`, { accept: MANIFEST_ACCEPT }, what);
    if (res.statusCode !== 200) {
      const { codes, text } = await registryErrors(res);
      const ref = `${this.registry}/${this.repository}${tagOrDigest.startsWith("sha256:") ? "@" : ":"}${tagOrDigest}`;
      if (res.statusCode === 404 || codes.some((c) => c === "MANIFEST_UNKNOWN" || c === "NAME_UNKNOWN" || c === "NOT_FOUND")) {
        throw new OciError("imageNotFound", `image ${ref} not found in registry ${this.registry} (HTTP ${res.statusCode}${text ? `: ${text}` : ""})`, {
          ...(tagOrDigest.startsWith("sha256:") ? { digest: tagOrDigest } : {}),
        });
      }
      if (res.statusCode === 429) {
        throw new OciError("image", `registry ${this.registry} is rate limiting pulls (HTTP 429) while fetching ${ref}; try again later`);
      }
      throw new OciError("image", `registry ${this.registry} answered HTTP ${res.statusCode} for ${ref}${text ? `: ${text}` : ""}`);
    }
    let body: Buffer;
    try {
      body = await readLimited(res, MAX_MANIFEST_BYTES, what);
    } catch (e) {
      if (e instanceof OciError) throw e;
      if (this.signal?.aborted) throw abortError(this.signal);
      throw new OciError("image", `registry ${this.registry}: reading ${what} failed: ${describeError(e)}`, { cause: e });
    }
    const digest = `sha256:${createHash("sha256").update(body).digest("hex")}`;
    const ct = (header(res, "content-type") ?? "").split(";")[0]!.trim();
    let mediaType = ct;
    try {
      const j = JSON.parse(body.toString("utf8")) as { mediaType?: unknown; manifests?: unknown; layers?: unknown };
      if (typeof j.mediaType === "string" && j.mediaType) mediaType = j.mediaType;
      else if (!mediaType || mediaType === "application/json" || mediaType === "text/plain") {
        mediaType = Array.isArray(j.manifests) ? MEDIA.ociIndex : Array.isArray(j.layers) ? MEDIA.ociManifest : mediaType;
      }
    } catch {
      throw new OciError("image", `registry ${this.registry} sent a ${what} that is not JSON`, { digest });
    }
    return { body, mediaType, digest };
  }

  /** Start a blob download; the caller streams (and verifies) `body`. */
  async getBlob(digest: string): Promise<{ body: RawResponse["body"]; length: number | undefined }> {
    const what = `blob ${digest}`;
    const res = await this.get(`/v2/${this.repository}/blobs/${digest}`, {}, what);
    if (res.statusCode !== 200) {
      const { text } = await registryErrors(res);
      throw new OciError(
        "image",
        `registry ${this.registry} answered HTTP ${res.statusCode} for blob ${digest} of ${this.repository}${text ? `: ${text}` : ""}`,
        { digest },
      );
    }
    const cl = Number(header(res, "content-length"));
    return { body: res.body, length: Number.isFinite(cl) ? cl : undefined };
  }

  /** The scheme in use after ping ("https" or "http"), for tests and messages. */
  get scheme(): string | undefined {
    return this.base?.split(":")[0];
  }

  get hostname(): string {
    return registryHostname(this.host);
  }
}

let systemPem: string[] | undefined;
function systemBundle(): string[] {
  if (systemPem) return systemPem;
  systemPem = [];
  for (const f of SYSTEM_BUNDLES) {
    try {
      systemPem.push(readFileSync(f, "utf8"));
      break;
    } catch {
      /* not there */
    }
  }
  return systemPem;
}
