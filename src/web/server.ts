/**
 * The page's HTTP server: a fixed table of routes (the page, its assets,
 * four JSON reads, one event stream), nothing looked up by path, so no
 * request can reach a file it does not name. Every request needs the access
 * token (`Authorization: Bearer TOKEN`, or the cookie that `/?token=TOKEN`
 * sets once): without it 401, with a wrong one 403, and no data either way.
 * GET and HEAD only, no request bodies, short URLs, bounded headers and
 * time; at most MAX_STREAMS event streams at once.
 */
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Change, WebModel } from './model.js';

export interface Asset {
  readonly type: string;
  readonly body: Buffer;
}

export interface WebServerOptions {
  readonly model: WebModel;
  readonly token: string;
  /** URL path -> its bytes, read once at start (the page, its script and style, uPlot's files). */
  readonly assets: ReadonlyMap<string, Asset>;
  /** Whether Host must be a loopback name (the default listener): a page of another site cannot reach it through DNS rebinding. */
  readonly loopbackHostOnly: boolean;
}

const COOKIE = 'qs_web_token';
const MAX_URL = 2048;
const MAX_STREAMS = 16;
const HEARTBEAT_MS = 15_000;
const MAX_DOMAIN_PAGE = 500;
const MAX_VOLUME_PAGE = 100;
const MAX_QUERY_TEXT = 64;

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
  'x-frame-options': 'DENY',
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function sameToken(given: string, token: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

/** The token the request carries (header, else cookie), or null. */
function givenToken(req: http.IncomingMessage): string | null {
  const auth = req.headers.authorization;
  if (auth?.startsWith('Bearer ')) return auth.slice(7).trim();
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === COOKIE) return part.slice(eq + 1).trim();
  }
  return null;
}

function intParam(u: URL, name: string, dflt: number, max: number): number {
  const v = u.searchParams.get(name);
  if (v === null) return dflt;
  if (!/^\d{1,9}$/.test(v)) throw new HttpError(400, `${name} must be a whole number`);
  return Math.min(Number(v), max);
}

function textParam(u: URL, name: string): string {
  const v = u.searchParams.get(name) ?? '';
  if (v.length > MAX_QUERY_TEXT) throw new HttpError(400, `${name} is longer than ${MAX_QUERY_TEXT} characters`);
  return v;
}

export class WebServer {
  readonly server: http.Server;
  private readonly streams = new Set<http.ServerResponse>();
  private readonly routes: ReadonlyMap<string, (u: URL, req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> | void>;

  constructor(private readonly opts: WebServerOptions) {
    this.server = http.createServer({ requestTimeout: 30_000, headersTimeout: 10_000, maxHeaderSize: 8192 }, (req, res) => {
      this.handle(req, res).catch((e: unknown) => this.fail(res, e));
    });
    const { model } = opts;
    this.routes = new Map<string, (u: URL, req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> | void>([
      ['/api/pools', (_u, _q, res) => this.json(res, model.poolsReply())],
      ['/api/history', (_u, _q, res) => this.json(res, { sampleMs: model.sampleMs, pools: model.history.snapshot() })],
      [
        '/api/domains',
        (u, _q, res) => this.json(res, model.domainPage(intParam(u, 'offset', 0, 1e9), intParam(u, 'limit', 100, MAX_DOMAIN_PAGE), textParam(u, 'q'))),
      ],
      [
        '/api/volumes',
        async (u, _q, res) => {
          const page = await model.volumePage(textParam(u, 'pool'), intParam(u, 'offset', 0, 1e9), intParam(u, 'limit', 50, MAX_VOLUME_PAGE));
          if (!page) throw new HttpError(404, 'no such pool');
          this.json(res, page);
        },
      ],
      ['/api/events', (_u, req, res) => this.stream(req, res)],
    ]);
  }

  async listen(host: string, port: number): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve());
    });
    return this.server.address() as AddressInfo;
  }

  async close(): Promise<void> {
    for (const s of this.streams) s.end();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private send(res: http.ServerResponse, status: number, type: string, body: string | Buffer, extra: Record<string, string> = {}): void {
    res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': type, 'content-length': String(Buffer.byteLength(body)), ...extra });
    res.end(res.req.method === 'HEAD' ? undefined : body);
  }

  private json(res: http.ServerResponse, value: unknown): void {
    this.send(res, 200, 'application/json; charset=utf-8', JSON.stringify(value));
  }

  private fail(res: http.ServerResponse, e: unknown): void {
    const status = e instanceof HttpError ? e.status : 500;
    if (res.headersSent) return void res.destroy();
    this.send(res, status, 'text/plain; charset=utf-8', `${status === 500 ? 'error' : (e as Error).message}\n`, status >= 400 && status < 500 ? { connection: 'close' } : {});
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, 'only GET and HEAD');
    // No request has a body here: one announced is refused unread.
    if (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') throw new HttpError(413, 'no request body expected');
    if (req.headers['transfer-encoding'] !== undefined) throw new HttpError(413, 'no request body expected');
    const raw = req.url ?? '/';
    if (raw.length > MAX_URL) throw new HttpError(414, 'URL too long');
    if (this.opts.loopbackHostOnly && !/^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\])(:\d{1,5})?$/.test(req.headers.host ?? ''))
      throw new HttpError(403, 'Host must be a loopback address');
    const u = new URL(raw, 'http://local');
    const fromQuery = u.pathname === '/' ? u.searchParams.get('token') : null;
    if (fromQuery !== null) {
      if (!sameToken(fromQuery, this.opts.token)) throw new HttpError(403, 'wrong token');
      // Once: the token goes into a cookie only this page's requests carry, and leaves the address bar.
      return this.send(res, 303, 'text/plain; charset=utf-8', 'see /\n', {
        location: '/',
        'set-cookie': `${COOKIE}=${this.opts.token}; HttpOnly; SameSite=Strict; Path=/`,
      });
    }
    const given = givenToken(req);
    if (given === null) throw new HttpError(401, 'token required: open the address qubes-storage-web printed');
    if (!sameToken(given, this.opts.token)) throw new HttpError(403, 'wrong token');
    const asset = this.opts.assets.get(u.pathname);
    if (asset) return this.send(res, 200, asset.type, asset.body);
    const route = this.routes.get(u.pathname);
    if (!route) throw new HttpError(404, 'not found');
    await route(u, req, res);
  }

  /** Server-Sent Events: each model change as `event: TYPE` with its data as JSON. */
  private stream(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.streams.size >= MAX_STREAMS) throw new HttpError(503, 'too many event streams');
    res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'text/event-stream; charset=utf-8' });
    res.write(': connected\n\n');
    this.streams.add(res);
    const off = this.opts.model.onChange((c: Change) => res.write(`event: ${c.type}\ndata: ${JSON.stringify(c.data)}\n\n`));
    const beat = setInterval(() => res.write(': beat\n\n'), HEARTBEAT_MS);
    const end = () => {
      off();
      clearInterval(beat);
      this.streams.delete(res);
    };
    req.on('close', end);
    res.on('close', end);
  }
}
