import { freePort } from '../../libs/db/src/embedded-postgres';
import { startServer } from '../support/server-process';
import { createTestDatabase } from '../support/test-database';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { systemMeta } from '@strata/events';
import { errorCodes, imageManifest, pushBlob, randomBlob } from '../support/http';
import { startTestApp, type TestApp } from '../support/test-app';

interface Family {
  name: string;
  type: string;
}

interface Scrape {
  readonly families: Family[];
  readonly samples: { name: string; labels: Record<string, string>; value: number }[];
}

/** A scrape: parsed as a whole by a Prometheus text-format parser (it must parse), and read line by line. */
async function scrape(url: string, headers: Record<string, string> = {}): Promise<Scrape> {
  const res = await fetch(`${url}/metrics`, { headers });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toContain('text/plain');
  const text = await res.text();
  const families = parsePrometheusTextFormat(text) as Family[];
  const samples = text
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(l);
      if (!m) throw new Error(`not a sample line: ${l}`);
      const labels = Object.fromEntries(
        [...(m[2] ?? '').matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1]!, x[2]!]),
      );
      return { name: m[1]!, labels, value: Number(m[3]) };
    });
  return { families, samples };
}

const value = (s: Scrape, name: string, labels: Record<string, string> = {}): number =>
  s.samples
    .filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v))
    .reduce((t, x) => t + x.value, 0);

describe('GET /metrics', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  it('counts a known sequence of requests, in the text format, with bounded labels', async () => {
    const before = await scrape(t.url);
    const blobs = ['metrics/a', 'metrics/b', 'metrics/c'];
    const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
    const layer = randomBlob(70_000);
    for (const repo of blobs) {
      expect((await pushBlob(t.url, repo, config)).status).toBe(201);
      expect((await pushBlob(t.url, repo, layer.data)).status).toBe(201);
      const put = await fetch(`${t.url}/v2/${repo}/manifests/v1`, {
        method: 'PUT',
        headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' },
        body: imageManifest(config, [{ digest: layer.digest, size: layer.data.length }]),
      });
      expect(put.status).toBe(201);
    }
    // A refused commit (wrong digest) and a refused manifest (unknown blob).
    const bad = await pushBlob(t.url, 'metrics/a', Buffer.from('x'), `sha256:${'0'.repeat(64)}`);
    expect(bad.status).toBe(400);
    const refused = await fetch(`${t.url}/v2/metrics/a/manifests/v2`, {
      method: 'PUT',
      headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' },
      body: imageManifest(Buffer.from('missing config')),
    });
    expect(refused.status).toBe(400);
    for (let i = 0; i < 5; i++) expect((await fetch(`${t.url}/v2/metrics/b/manifests/v1`)).status).toBe(200);
    const open = await fetch(`${t.url}/v2/metrics/c/blobs/uploads/`, { method: 'POST' });
    expect(open.status).toBe(202);

    const after = await scrape(t.url);
    const delta = (name: string, labels: Record<string, string> = {}): number =>
      value(after, name, labels) - value(before, name, labels);
    // The first repository's push stores both blobs; the same bytes pushed to the next two were held already.
    expect(delta('strata_blob_commits_total', { outcome: 'created' })).toBe(2);
    expect(delta('strata_blob_commits_total', { outcome: 'existed' })).toBe(4);
    expect(delta('strata_blob_commits_total', { outcome: 'refused' })).toBe(1);
    expect(delta('strata_manifest_pushes_total', { outcome: 'created' })).toBe(3);
    expect(delta('strata_manifest_pushes_total', { outcome: 'refused' })).toBe(1);
    expect(
      delta('strata_http_request_duration_seconds_count', {
        route: '/v2/:name/manifests/:reference',
        method: 'GET',
        status_class: '2xx',
      }),
    ).toBe(5);
    // Three 70 kB layers at least went in, five manifests at least came out.
    expect(delta('strata_http_received_bytes_total')).toBeGreaterThan(3 * 70_000);
    expect(delta('strata_http_sent_bytes_total')).toBeGreaterThan(5 * 300);
    // Database figures are read at most every 5 s: a scrape after that sees the open upload and the last event.
    await new Promise((r) => setTimeout(r, 5100));
    const later = await scrape(t.url);
    expect(value(later, 'strata_uploads_in_progress')).toBeGreaterThanOrEqual(1);
    const seq = await t.database.pool.query<{ seq: string }>('SELECT max(seq) AS seq FROM events');
    expect(value(later, 'strata_event_log_last_seq')).toBe(Number(seq.rows[0]!.seq));
    expect(value(after, 'strata_db_pool_connections', { state: 'idle' })).toBeGreaterThanOrEqual(0);
    // No repository, tag or digest ever becomes a label value.
    const labelValues = after.samples.flatMap((x) => Object.values(x.labels));
    expect(labelValues.filter((v) => /metrics\/|sha256:|^v1$/.test(v))).toEqual([]);
    const routes = new Set(
      after.samples
        .filter((x) => x.name === 'strata_http_request_duration_seconds_count')
        .map((x) => x.labels.route),
    );
    for (const r of routes) expect(r === 'unmatched' || r?.startsWith('/')).toBe(true);
    expect(after.families.map((f) => f.name)).toEqual(
      expect.arrayContaining([
        'strata_http_request_duration_seconds',
        'strata_blob_commits_total',
        'strata_job_runs_total',
      ]),
    );
  });

  it('turns into a 404 route under STRATA_METRICS=false', async () => {
    const off = await startTestApp({ env: { STRATA_METRICS: 'false' } });
    try {
      const res = await fetch(`${off.url}/metrics`);
      expect(res.status).toBe(404);
      expect(await errorCodes(res)).toEqual(['UNSUPPORTED']);
    } finally {
      await off.close();
    }
  });

  it('with authentication on, serves only an account granted admin on **', async () => {
    const authed = await startTestApp({ env: { STRATA_AUTH: 'token', STRATA_ADMIN_PASSWORD: 'pw' } });
    try {
      const identity = authed.runtime.identity!;
      await identity.accounts.addAccount('viewer', 'user', 'viewer-pw', systemMeta('test'));
      await identity.accounts.setGrant({ kind: 'user', name: 'viewer' }, '**', ['pull'], systemMeta('test'));
      await identity.directory.reload();
      const basic = (u: string, p: string): Record<string, string> => ({
        authorization: `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`,
      });
      expect((await fetch(`${authed.url}/metrics`)).status).toBe(401);
      expect((await fetch(`${authed.url}/metrics`, { headers: basic('viewer', 'viewer-pw') })).status).toBe(
        403,
      );
      await scrape(authed.url, basic('admin', 'pw'));
    } finally {
      await authed.close();
    }
  });

  it('moves to a port of its own with STRATA_METRICS_PORT', async () => {
    const database = await createTestDatabase();
    const port = await freePort();
    const server = await startServer({
      DATABASE_URL: database.url,
      STRATA_METRICS_PORT: String(port),
      STRATA_DATA_DIR: `/tmp/strata-metrics-${port}`,
    });
    try {
      expect((await fetch(`${server.url}/metrics`)).status).toBe(404);
      await scrape(`http://127.0.0.1:${port}`);
      expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404);
    } finally {
      server.child.kill('SIGTERM');
      await server.exited;
      await database.drop();
    }
  });
});
