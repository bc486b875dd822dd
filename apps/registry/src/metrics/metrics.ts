import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type pg from 'pg';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Database figures are read at most this often, however often Prometheus scrapes. */
const DB_FIGURES_TTL_MS = 5000;

type StatusClass = '1xx' | '2xx' | '3xx' | '4xx' | '5xx';
/** Requests whose blob the registry held already (counted as `existed`, not `created`). */
const existing = new WeakSet<FastifyRequest>();

/** Marks the request's committed blob as one the registry already held. */
export function blobExisted(req: FastifyRequest): void {
  existing.add(req);
}

const statusClass = (status: number): StatusClass =>
  `${Math.min(5, Math.max(1, Math.floor(status / 100)))}xx` as StatusClass;

interface Counted {
  read: number;
  written: number;
}

/**
 * Strata's Prometheus metrics (prom-client), one registry per process. Labels are bounded: route templates (never
 * repository names, tags or digests), methods, status classes, outcomes, job names.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly starts = new WeakMap<FastifyRequest, bigint>();
  /** Per connection, the bytes already counted: each response counts what its connection moved since. */
  private readonly counted = new WeakMap<object, Counted>();
  private dbFigures: { at: number; value: Promise<{ uploads: number; lastSeq: number }> } | null = null;

  private readonly requestDuration = new Histogram({
    name: 'strata_http_request_duration_seconds',
    help: 'Time from a request head to its response, by route template, method and status class',
    labelNames: ['route', 'method', 'status_class'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  private readonly received = new Counter({
    name: 'strata_http_received_bytes_total',
    help: 'Bytes read from clients (request heads and bodies)',
    registers: [this.registry],
  });
  private readonly sent = new Counter({
    name: 'strata_http_sent_bytes_total',
    help: 'Bytes written to clients (response heads and bodies)',
    registers: [this.registry],
  });
  private readonly blobCommits = new Counter({
    name: 'strata_blob_commits_total',
    help: 'Blob uploads completed (created, or mounted from another repository), completed with a blob the registry held already (existed), or refused (4xx)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  private readonly manifestPushes = new Counter({
    name: 'strata_manifest_pushes_total',
    help: 'Manifest PUTs, stored or refused (4xx)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly storageErrors = new Counter({
    name: 'strata_storage_errors_total',
    help: 'Blob storage operations that failed, by error code (ENOSPC, EIO, ...)',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });
  readonly jobRuns = new Counter({
    name: 'strata_job_runs_total',
    help: 'Scheduled job runs by job and outcome (ok, failed, skipped: another replica held the job)',
    labelNames: ['job', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly jobDuration = new Histogram({
    name: 'strata_job_duration_seconds',
    help: 'Scheduled job run time',
    labelNames: ['job'] as const,
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });

  constructor(pool: pg.Pool) {
    collectDefaultMetrics({ register: this.registry, prefix: 'strata_' });
    new Gauge({
      name: 'strata_db_pool_connections',
      help: 'Database pool connections by state (in use, idle)',
      labelNames: ['state'] as const,
      registers: [this.registry],
      collect() {
        this.set({ state: 'in_use' }, pool.totalCount - pool.idleCount);
        this.set({ state: 'idle' }, pool.idleCount);
      },
    });
    new Gauge({
      name: 'strata_db_pool_waiting_requests',
      help: 'Queries waiting for a database pool connection',
      registers: [this.registry],
      collect() {
        this.set(pool.waitingCount);
      },
    });
    const figures = (): Promise<{ uploads: number; lastSeq: number }> => this.readDbFigures(pool);
    new Gauge({
      name: 'strata_uploads_in_progress',
      help: 'Upload sessions started and neither completed, cancelled nor expired (all replicas)',
      registers: [this.registry],
      async collect() {
        this.set((await figures()).uploads);
      },
    });
    new Gauge({
      name: 'strata_event_log_last_seq',
      help: 'Sequence number of the newest event (rate() of it is the append rate)',
      registers: [this.registry],
      async collect() {
        this.set((await figures()).lastSeq);
      },
    });
  }

  private readDbFigures(pool: pg.Pool): Promise<{ uploads: number; lastSeq: number }> {
    const now = Date.now();
    if (this.dbFigures && now - this.dbFigures.at < DB_FIGURES_TTL_MS) return this.dbFigures.value;
    const value = pool
      .query<{
        uploads: string;
        last_seq: string | null;
      }>('SELECT (SELECT count(*) FROM uploads) AS uploads, (SELECT max(seq) FROM events) AS last_seq')
      .then((r) => ({ uploads: Number(r.rows[0]!.uploads), lastSeq: Number(r.rows[0]!.last_seq ?? 0) }));
    // A failed read is not kept: the next scrape tries again (and this one reports the scrape as failed).
    value.catch(() => (this.dbFigures = null));
    this.dbFigures = { at: now, value };
    return value;
  }

  /** Hooks on every request: duration, bytes, and the outcomes of blob commits and manifest pushes. */
  install(fastify: FastifyInstance): void {
    fastify.addHook('onRequest', (req, _reply, done) => {
      this.starts.set(req, process.hrtime.bigint());
      done();
    });
    fastify.addHook('onResponse', (req, reply, done) => {
      this.observe(req, reply);
      done();
    });
  }

  private observe(req: FastifyRequest, reply: FastifyReply): void {
    const start = this.starts.get(req);
    if (start === undefined) return;
    const route = req.routeOptions.url ?? 'unmatched';
    const status = reply.statusCode;
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    this.requestDuration.observe({ route, method: req.method, status_class: statusClass(status) }, seconds);
    // What the connection moved since its previous response (a keep-alive connection's requests follow each other;
    // a body read ahead of its request's hooks is counted all the same, and the total over responses is right).
    const socket = req.raw.socket;
    const counted = this.counted.get(socket) ?? { read: 0, written: 0 };
    this.received.inc(Math.max(0, socket.bytesRead - counted.read));
    this.sent.inc(Math.max(0, socket.bytesWritten - counted.written));
    counted.read = socket.bytesRead;
    counted.written = socket.bytesWritten;
    this.counted.set(socket, counted);
    const outcome = status < 300 ? 'created' : status < 500 ? 'refused' : null;
    if (outcome === null) return;
    if (
      (route === '/v2/:name/blobs/uploads/:id' && req.method === 'PUT') ||
      (route === '/v2/:name/blobs/uploads' && req.method === 'POST' && status === 201) ||
      (route === '/v2/:name/blobs/uploads' &&
        req.method === 'POST' &&
        status >= 400 &&
        status < 500 &&
        isMonolithic(req))
    )
      this.blobCommits.inc({ outcome: outcome === 'created' && existing.has(req) ? 'existed' : outcome });
    else if (route === '/v2/:name/manifests/:reference' && req.method === 'PUT')
      this.manifestPushes.inc({ outcome });
  }

  /** Times a job run and counts its outcome. */
  async job<T>(job: string, run: () => Promise<T>): Promise<T> {
    const end = this.jobDuration.startTimer({ job });
    try {
      const value = await run();
      this.jobRuns.inc({ job, outcome: 'ok' });
      return value;
    } catch (e) {
      this.jobRuns.inc({ job, outcome: 'failed' });
      throw e;
    } finally {
      end();
    }
  }
}

function isMonolithic(req: FastifyRequest): boolean {
  const q = req.query as Record<string, unknown> | undefined;
  return typeof q?.digest === 'string';
}
