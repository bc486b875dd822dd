// BENCH_UI=1 npm run bench: the web UI's API on a registry holding 10,000 repositories and 100,000 tags (issue 16).
//   - seeds them through the registry API itself (blob uploads and manifest PUTs, so every row and event is real):
//     10,000 repositories × 10 tags, each tag its own manifest; one repository's `latest` moved 200 times;
//   - p50/p99 latency of the repository list (first page, a search, a page deep in the list), a repository's
//     tags, an image, a tag timeline of 200 periods and the audit log's first page (4 clients, 10 s each);
//   - statistics gathered (ANALYZE) after seeding, as autovacuum would;
//   - the UI's first view in Debian's chromium (navigation until the repository table shows), median of 5 loads.
// BENCH_QUICK=1 seeds 1,000 repositories × 10 tags instead.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import pg from 'pg';
import { createBenchDatabase, startStrata, stopProcess } from './lib/servers.mjs';
import { expectStatus, median, percentile, request, runClosedLoop, sha256, waitQuiet } from './lib/util.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const QUICK = /^(1|true|yes)$/i.test(process.env.BENCH_QUICK ?? '');
const REPOSITORIES = QUICK ? 1000 : 10_000;
const TAGS = 10;
const MOVES = 200;
const DURATION_MS = QUICK ? 3000 : 10_000;
const QUIET_WAIT_S = Number(process.env.BENCH_QUIET_WAIT ?? (QUICK ? 3 : 15));
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const log = (msg) => process.stderr.write(`[bench ui ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
const agent = new http.Agent({ keepAlive: true, maxSockets: 16, maxFreeSockets: 16 });

const repoName = (i) => `team-${String(i % 100).padStart(2, '0')}/app-${String(i).padStart(5, '0')}`;

async function pushBlob(base, repo, bytes) {
  const res = await request(base, {
    method: 'POST',
    path: `/v2/${repo}/blobs/uploads/?digest=${sha256(bytes)}`,
    headers: { 'Content-Type': 'application/octet-stream' },
    body: bytes,
    agent,
  });
  expectStatus(res, 201, 'POST blob');
}

function manifestOf(config, layer, n) {
  return JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: {
      mediaType: 'application/vnd.oci.image.config.v1+json',
      digest: sha256(config),
      size: config.length,
    },
    layers: [
      { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(layer), size: layer.length },
    ],
    annotations: { 'org.example.build': String(n) },
  });
}

async function putManifest(base, repo, tag, body) {
  const res = await request(base, {
    method: 'PUT',
    path: `/v2/${repo}/manifests/${tag}`,
    headers: { 'Content-Type': OCI_MANIFEST },
    body,
    agent,
  });
  expectStatus(res, 201, 'PUT manifest');
}

/** 10 tags in each repository (its own config and layer), 8 repositories at a time. */
async function seed(base) {
  const started = performance.now();
  let done = 0;
  const work = Array.from({ length: REPOSITORIES }, (_, i) => i);
  await runClosedLoop({
    concurrency: 8,
    items: work,
    op: async (i) => {
      const repo = repoName(i);
      const config = Buffer.from(
        JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: [`N=${i}`] } }),
      );
      const layer = Buffer.from(`layer of ${repo}\n`.repeat(64));
      await pushBlob(base, repo, config);
      await pushBlob(base, repo, layer);
      for (let t = 0; t < TAGS; t++) await putManifest(base, repo, `v${t}`, manifestOf(config, layer, t));
      if (++done % 1000 === 0) log(`seeded ${done} repositories`);
    },
  }).then((r) => {
    if (r.errors) throw r.firstError;
  });
  const repo = repoName(0);
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['N=0'] } }),
  );
  const layer = Buffer.from(`layer of ${repo}\n`.repeat(64));
  for (let n = 0; n < MOVES; n++)
    await putManifest(base, repo, 'latest', manifestOf(config, layer, 1000 + n));
  log(
    `seeded ${REPOSITORIES} repositories, ${REPOSITORIES * TAGS + 1} tags in ${Math.round((performance.now() - started) / 1000)} s`,
  );
}

async function latency(base, what, path) {
  const op = async () => {
    const res = await request(base, { path, agent, sink: 'discard' });
    if (res.status !== 200) throw new Error(`${what}: HTTP ${res.status}`);
  };
  await runClosedLoop({ concurrency: 4, durationMs: 1000, op });
  const r = await runClosedLoop({ concurrency: 4, durationMs: DURATION_MS, op });
  if (r.errors) throw r.firstError;
  const row = { what, path, n: r.count, p50: percentile(r.latencies, 50), p99: percentile(r.latencies, 99) };
  log(`${what}: p50 ${row.p50.toFixed(1)} ms, p99 ${row.p99.toFixed(1)} ms (${r.count} requests)`);
  return row;
}

/** Navigation to the repository table's first row in headless chromium, median of 5 loads (null without it). */
async function firstView(base) {
  if (spawnSync('/usr/bin/chromium', ['--version']).status !== 0) {
    log('no /usr/bin/chromium: the first-view measurement is skipped (apt-get install chromium)');
    return null;
  }
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
  });
  try {
    const times = [];
    for (let i = 0; i < 6; i++) {
      const page = await browser.newPage();
      const t0 = performance.now();
      await page.goto(`${base}/ui/`);
      await page.getByRole('table', { name: 'Repositories' }).locator('tbody tr').first().waitFor();
      if (i > 0) times.push(performance.now() - t0); // the first load warms the browser, not the registry
      await page.close();
    }
    return median(times);
  } finally {
    await browser.close();
  }
}

const tmp = mkdtempSync(join(tmpdir(), 'strata-bench-ui-'));
const db = await createBenchDatabase();
let server;
try {
  const dir = join(tmp, 'strata');
  mkdirSync(dir, { recursive: true });
  server = await startStrata({ root: ROOT, dir, db, log, name: 'strata' });
  await seed(server.base);
  // As autovacuum would have by now (it is off on this machine's PostgreSQL, so nothing else gathers statistics):
  // without them the planner reads every manifest.pushed event for one image's push record.
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  await client.query('ANALYZE');
  await client.end();
  await waitQuiet(QUIET_WAIT_S * 1000);
  const deep = encodeURIComponent(repoName(Math.floor(REPOSITORIES * 0.9)));
  const rows = [
    await latency(server.base, 'repositories, first page (50)', '/api/v1/repositories'),
    await latency(server.base, 'repositories, search "app-0999"', '/api/v1/repositories?q=app-0999'),
    await latency(server.base, 'repositories, page at 90%', `/api/v1/repositories?after=${deep}`),
    await latency(
      server.base,
      'tags of a repository',
      `/api/v1/tags?repository=${encodeURIComponent(repoName(0))}`,
    ),
    await latency(
      server.base,
      'image',
      `/api/v1/image?repository=${encodeURIComponent(repoName(1))}&reference=v3`,
    ),
    await latency(
      server.base,
      `tag timeline (${MOVES} periods)`,
      `/api/v1/timeline?repository=${encodeURIComponent(repoName(0))}&tag=latest`,
    ),
    await latency(server.base, 'audit log, first page (50)', '/api/v1/audit'),
    await latency(
      server.base,
      'audit log, one repository',
      `/api/v1/audit?repository=${encodeURIComponent(repoName(5))}`,
    ),
  ];
  const view = await firstView(server.base);
  const text = [
    `UI API on ${REPOSITORIES} repositories, ${REPOSITORIES * TAGS + 1} tags (4 clients, ${DURATION_MS / 1000} s each)`,
    '',
    '| request | p50 ms | p99 ms | requests |',
    '| --- | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.what} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.n} |`),
    '',
    `first view in chromium (navigation to the repository table, median of 5): ${view === null ? 'skipped' : `${Math.round(view)} ms`}`,
    '',
  ].join('\n');
  process.stdout.write(`\n${text}`);
  writeFileSync(join(ROOT, 'bench', 'results-ui.md'), text);
} finally {
  agent.destroy();
  if (server) await stopProcess(server.child);
  // BENCH_UI_KEEP_DB=1 keeps the seeded database, to look at query plans afterwards.
  if (process.env.BENCH_UI_KEEP_DB) log(`kept the database: ${db.url}`);
  else await db.drop();
  rmSync(tmp, { recursive: true, force: true });
}
