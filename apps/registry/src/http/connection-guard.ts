import { readFileSync } from 'node:fs';
import type { Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { RegistryError } from '@strata/oci';
import { errorHeaders } from './error-headers';

export interface ConnectionLimits {
  /** Connections served at once; the next ones are answered 503, or closed at accept past `REFUSED_MAX` more. */
  readonly maxConnections: number;
  /** The same per client address; 0: no limit of its own. */
  readonly maxConnectionsPerClient: number;
  /** A client that sends none of the body it owes, or reads none of the answer being written, this long is cut. */
  readonly clientIdleTimeoutMs: number;
}

/**
 * Connections beyond a limit that are still let in to be told 503 and Retry-After, over all and per client
 * address: enough for well-behaved clients to learn why and back off, too few to hold many descriptors. Past them
 * a connection is closed as it is accepted.
 */
export const REFUSED_MAX = 64;
const REFUSED_PER_CLIENT_MAX = 8;
/** A refused connection that sends no request head in this long is closed without an answer. */
const REFUSED_GRACE_MS = 5000;
/**
 * Descriptors kept for what is not a client connection: the database pool, blob files being written and read,
 * the jobs' directory walks, the logs.
 */
export const FD_RESERVE = 256;
/** The default connection limit where the open-file limit allows it. */
const DEFAULT_MAX_CONNECTIONS = 4096;
/** How long a 408 for a stalled body may take to go out before its connection is closed regardless. */
const CUT_GRACE_MS = 2000;
/** How often refusals are summed up in the log, at most. */
const REFUSAL_LOG_MS = 10_000;

/** The process's open-file limit (soft, which Node raises to the hard one at start); null where it is not known. */
export function openFileLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** The most connections the open-file limit leaves room for, with the descriptors the rest of the process needs. */
export function connectionsAllowedBy(fileLimit: number | null): number {
  return fileLimit === null ? Number.MAX_SAFE_INTEGER : Math.max(16, fileLimit - FD_RESERVE - REFUSED_MAX);
}

export function defaultMaxConnections(fileLimit: number | null): number {
  return Math.min(DEFAULT_MAX_CONNECTIONS, connectionsAllowedBy(fileLimit));
}

interface Connection {
  /** The TCP socket, under TLS too: its counters see the bytes on the wire. */
  readonly raw: Socket;
  readonly client: string;
  readonly acceptedAt: number;
  /** Beyond a limit: its first request is answered 503 and the connection closed. */
  readonly refused: boolean;
  /** The response to the latest request on the connection. */
  res: ServerResponse | null;
  requestId: string;
  /** Bytes moved on the wire (read, and written into the kernel) at the last check, and since when unchanged. */
  moved: number;
  idleSince: number;
  /** When the connection was cut for idling. */
  cutAt: number | null;
}

const STATE = Symbol('strata.connection');
type Tagged = Socket & { [STATE]?: Connection; _parent?: Tagged };

function moved(raw: Socket): number {
  // libuv's queue holds what the kernel has not taken yet: a client reading slowly takes a little at a time,
  // which a count of finished writes (whole pieces) would not show.
  const queued =
    (raw as Socket & { _handle?: { writeQueueSize?: number } | null })._handle?.writeQueueSize ?? 0;
  return raw.bytesRead + raw.bytesWritten - queued;
}

function queuedOut(c: Connection, socket: Socket): boolean {
  const queued = (c.raw as Socket & { _handle?: { writeQueueSize?: number } | null })._handle?.writeQueueSize;
  return socket.writableLength > 0 || (queued ?? 0) > 0;
}

/**
 * Bounds what clients can hold: connections over all and per address (beyond them, a 503 the client can act on,
 * or a close at accept), and time spent waiting on a client that has gone quiet in the middle of a request. Only
 * waiting on the client counts: a handler busy without socket traffic (a commit flushing or composing a blob, a
 * database lock) is never cut, nor is a body the handler has stopped reading for a while (its buffers are full,
 * so the client cannot send), nor a download read slowly.
 */
export class ConnectionGuard {
  private readonly open = new Set<Connection>();
  private readonly perClient = new Map<string, number>();
  private readonly sweeper: NodeJS.Timeout;
  private refusedAnswered = 0;
  private refusedClosed = 0;
  private lastRefusalLog = 0;

  constructor(
    server: Server,
    private readonly limits: ConnectionLimits,
    private readonly logger: Logger,
  ) {
    // Node itself closes connections past this at accept, before any JavaScript runs for them.
    server.maxConnections = limits.maxConnections + REFUSED_MAX;
    server.on('drop', () => void this.refusedClosed++);
    server.on('connection', (socket: Socket) => this.accept(socket));
    server.on('secureConnection', (socket: Tagged) => {
      const c = socket._parent?.[STATE];
      if (c) socket[STATE] = c;
    });
    this.sweeper = setInterval(
      () => this.sweep(),
      Math.min(1000, Math.max(100, limits.clientIdleTimeoutMs / 10)),
    );
    this.sweeper.unref();
    server.on('close', () => clearInterval(this.sweeper));
  }

  /** Ties a request to its connection; true when the connection is over a limit and must be answered 503. */
  onRequest(socket: Socket, res: ServerResponse, requestId: string): boolean {
    const c = (socket as Tagged)[STATE];
    if (!c) return false;
    c.res = res;
    c.requestId = requestId;
    c.moved = moved(c.raw);
    c.idleSince = Date.now();
    if (c.refused) this.refusedAnswered++;
    return c.refused;
  }

  private accept(raw: Tagged): void {
    const client = raw.remoteAddress ?? '';
    const mine = (this.perClient.get(client) ?? 0) + 1;
    const perClientMax = this.limits.maxConnectionsPerClient;
    const overClient = perClientMax > 0 && mine > perClientMax;
    if (overClient && mine > perClientMax + REFUSED_PER_CLIENT_MAX) {
      this.refusedClosed++;
      raw.destroy();
      return;
    }
    const now = Date.now();
    const c: Connection = {
      raw,
      client,
      acceptedAt: now,
      refused: overClient || this.open.size >= this.limits.maxConnections,
      res: null,
      requestId: '',
      moved: 0,
      idleSince: now,
      cutAt: null,
    };
    raw[STATE] = c;
    this.open.add(c);
    this.perClient.set(client, mine);
    raw.once('close', () => {
      this.open.delete(c);
      const left = (this.perClient.get(client) ?? 1) - 1;
      if (left > 0) this.perClient.set(client, left);
      else this.perClient.delete(client);
    });
  }

  private sweep(): void {
    const now = Date.now();
    for (const c of this.open) {
      if (c.raw.destroyed) continue;
      if (c.refused) {
        if (c.res === null && now - c.acceptedAt >= REFUSED_GRACE_MS) c.raw.destroy();
        continue;
      }
      const res = c.res;
      if (res === null) continue;
      if (c.cutAt !== null) {
        // The 408 had its chance to go out; whatever kept the connection open since, it ends now.
        if (now - c.cutAt >= CUT_GRACE_MS) c.raw.destroy();
        continue;
      }
      const progress = moved(c.raw);
      const waiting = this.waitingOn(c, res);
      if (waiting === null || progress !== c.moved) {
        c.moved = progress;
        c.idleSince = now;
        continue;
      }
      if (now - c.idleSince >= this.limits.clientIdleTimeoutMs) this.cut(c, res, waiting, now - c.idleSince);
    }
    this.logRefusals(now);
  }

  /** What the connection waits for from its client, if anything: body bytes it owes, or that it reads. */
  private waitingOn(c: Connection, res: ServerResponse): 'request body' | 'response' | null {
    const req = res.req;
    const socket = req.socket;
    // Node stops reading the socket (pauses it) once the body's buffer is full and until the handler reads on:
    // then the client cannot send, and that is not its doing.
    if (
      !req.complete &&
      !req.destroyed &&
      !socket.isPaused() &&
      req.readableLength < req.readableHighWaterMark
    )
      return 'request body';
    return queuedOut(c, socket) ? 'response' : null;
  }

  private cut(
    c: Connection,
    res: ServerResponse,
    waiting: 'request body' | 'response',
    idleMs: number,
  ): void {
    c.cutAt = Date.now();
    const req = res.req;
    const answer = waiting === 'request body' && !res.headersSent && res.socket !== null;
    this.logger.info(
      {
        reqId: c.requestId,
        method: req.method,
        url: req.url,
        remote: c.client,
        waiting,
        idleMs,
        status: answer ? 408 : undefined,
      },
      waiting === 'request body'
        ? 'closed a connection whose client stopped sending its request body'
        : 'closed a connection whose client stopped reading its response',
    );
    if (!answer) {
      c.raw.destroy();
      return;
    }
    // Once the 408 is written Node detaches the request from its connection, so the close never ends the body: a
    // handler still reading it would wait forever, holding its upload's open file. It is ended as a hang-up
    // would end it, once the connection is gone (a reset before that could lose the 408).
    c.raw.once('close', () => {
      if (!req.complete && !req.destroyed)
        req.destroy(Object.assign(new Error('aborted'), { code: 'ECONNRESET' }));
    });
    const body = JSON.stringify(
      new RegistryError('REQUEST_TIMEOUT', {
        reason: `no bytes of the request body for ${Math.round(idleMs / 1000)} s`,
      }).toEnvelope(),
    );
    // Connection: close makes Node end the connection once this is written; the handler still reading the body
    // sees it end as a client gone away.
    res.writeHead(408, {
      'Content-Type': 'application/json; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
      'X-Request-Id': c.requestId,
      'Docker-Distribution-API-Version': 'registry/2.0',
      Connection: 'close',
    });
    res.end(body);
  }

  private logRefusals(now: number): void {
    if (this.refusedAnswered + this.refusedClosed === 0 || now - this.lastRefusalLog < REFUSAL_LOG_MS) return;
    this.logger.warn(
      {
        answered503: this.refusedAnswered,
        closedAtAccept: this.refusedClosed,
        open: this.open.size,
        maxConnections: this.limits.maxConnections,
        maxConnectionsPerClient: this.limits.maxConnectionsPerClient,
      },
      'refused connections beyond the connection limits',
    );
    this.refusedAnswered = 0;
    this.refusedClosed = 0;
    this.lastRefusalLog = now;
  }
}

/**
 * Whether the guard cut this connection for idling (and answered its request 408): its handler then sees the
 * body end as if the client had hung up, which is not what happened.
 */
export function cutForIdling(socket: Socket | null | undefined): boolean {
  return ((socket as Tagged | null | undefined)?.[STATE]?.cutAt ?? null) !== null;
}

/** The answer to a request on a connection beyond a limit: 503, Retry-After, the envelope, then the close. */
export function refusal(): { status: number; headers: Record<string, string>; body: string } {
  const e = new RegistryError('UNAVAILABLE', { reason: 'too many connections; try again', retryAfter: 1 });
  return {
    status: e.status,
    headers: { ...errorHeaders(e), Connection: 'close', 'Content-Type': 'application/json; charset=utf-8' },
    body: JSON.stringify(e.toEnvelope()),
  };
}
