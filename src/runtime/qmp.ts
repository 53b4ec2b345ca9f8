/**
 * A minimal QMP (QEMU Machine Protocol) client: one connection to a qemu's
 * QMP unix socket, the capabilities handshake, then one command at a time.
 * Events qemu sends in between are skipped. Lines are bounded (a qemu that
 * floods the socket is cut off, not buffered without end).
 */
import * as net from 'node:net';

const MAX_LINE = 1 << 20;

export class QmpError extends Error {}

export class Qmp {
  private buf = '';
  private waiting: ((msg: Record<string, unknown> | Error) => void) | null = null;
  private queue: Array<Record<string, unknown>> = [];
  private failed: Error | null = null;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new QmpError('the QMP connection closed')));
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(socketPath: string): Promise<Qmp> {
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(socketPath);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    });
    const q = new Qmp(sock);
    try {
      const greeting = await q.next();
      if (!('QMP' in greeting)) throw new QmpError(`not a QMP greeting: ${JSON.stringify(greeting).slice(0, 200)}`);
      await q.execute('qmp_capabilities');
    } catch (e) {
      q.close();
      throw e;
    }
    return q;
  }

  /** Runs a command; resolves with its `return`, rejects with its `error`. */
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    for (;;) {
      const msg = await this.next();
      if ('event' in msg) continue;
      if ('error' in msg) {
        const err = msg['error'] as { class?: string; desc?: string };
        throw new QmpError(`QMP ${command}: ${err.class ?? 'error'}: ${err.desc ?? ''}`);
      }
      if ('return' in msg) return msg['return'];
    }
  }

  close(): void {
    this.sock.destroy();
  }

  private next(): Promise<Record<string, unknown>> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      this.waiting = (x) => (x instanceof Error ? reject(x) : resolve(x));
    });
  }

  private deliver(x: Record<string, unknown> | Error): void {
    const w = this.waiting;
    if (w) {
      this.waiting = null;
      w(x);
    } else if (!(x instanceof Error)) this.queue.push(x);
  }

  private fail(e: Error): void {
    if (this.failed) return;
    this.failed = e;
    this.deliver(e);
  }

  private onData(d: string): void {
    this.buf += d;
    for (let i = this.buf.indexOf('\n'); i >= 0; i = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, i).trim();
      this.buf = this.buf.slice(i + 1);
      if (!line) continue;
      try {
        this.deliver(JSON.parse(line) as Record<string, unknown>);
      } catch {
        this.fail(new QmpError(`QMP: not JSON: ${line.slice(0, 200)}`));
        this.sock.destroy();
        return;
      }
    }
    if (this.buf.length > MAX_LINE) {
      this.fail(new QmpError('QMP: line too long'));
      this.sock.destroy();
    }
  }
}
