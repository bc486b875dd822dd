// The workloads, each run the same way against either server. Every workload returns
// { metrics: { key: number }, profile } where profile covers only the timed part.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, rmSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import {
  expectStatus,
  peakRssMiB,
  percentile,
  profile,
  request,
  resetPeakRss,
  runClosedLoop,
  sha256,
  snapshot,
  withQuery,
} from './util.mjs';

const OCTET = 'application/octet-stream';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';

const keepAliveAgent = () => new http.Agent({ keepAlive: true, maxSockets: 32, maxFreeSockets: 32 });

/** Times `fn` and profiles the server (and PostgreSQL, this client, skopeo) meanwhile. */
async function profiled(server, fn) {
  resetPeakRss(server.pid);
  const a = snapshot(server.pid, server.db);
  const value = await fn();
  const b = { ...snapshot(server.pid, server.db), peakRssMiB: peakRssMiB(server.pid) };
  server.peakRssMiB = Math.max(server.peakRssMiB ?? 0, b.peakRssMiB);
  return { value, profile: profile(a, b) };
}

async function startUpload(server, repo, agent) {
  const res = await request(server.base, { method: 'POST', path: `/v2/${repo}/blobs/uploads/`, agent });
  expectStatus(res, 202, `POST /v2/${repo}/blobs/uploads/`);
  if (!res.headers.location) throw new Error('POST upload: no Location header');
  return res.headers.location;
}

/** POST, then one PUT ?digest= carrying the whole blob streamed from disk. */
async function monolithicUpload(server, repo, file) {
  const location = await startUpload(server, repo);
  const res = await request(server.base, {
    method: 'PUT',
    path: withQuery(location, 'digest', file.digest),
    headers: { 'Content-Type': OCTET, 'Content-Length': file.size },
    body: createReadStream(file.path, { highWaterMark: 1024 * 1024 }),
  });
  expectStatus(res, 201, 'PUT upload ?digest');
  checkDigestHeader(res, file.digest);
}

/** POST, PATCHes of `chunk` bytes with Content-Range, then PUT ?digest= with no body. */
async function chunkedUpload(server, repo, file, chunk) {
  let location = await startUpload(server, repo);
  for (let start = 0; start < file.size; start += chunk) {
    const end = Math.min(file.size, start + chunk) - 1;
    const res = await request(server.base, {
      method: 'PATCH',
      path: location,
      headers: {
        'Content-Type': OCTET,
        'Content-Length': end - start + 1,
        'Content-Range': `${start}-${end}`,
      },
      body: createReadStream(file.path, { start, end, highWaterMark: 1024 * 1024 }),
    });
    expectStatus(res, 202, `PATCH ${start}-${end}`);
    if (res.headers.location) location = res.headers.location;
  }
  const res = await request(server.base, {
    method: 'PUT',
    path: withQuery(location, 'digest', file.digest),
    headers: { 'Content-Length': 0 },
  });
  expectStatus(res, 201, 'PUT upload ?digest (after PATCHes)');
  checkDigestHeader(res, file.digest);
}

function checkDigestHeader(res, digest) {
  const got = res.headers['docker-content-digest'];
  if (got && got !== digest) throw new Error(`Docker-Content-Digest ${got}, expected ${digest}`);
}

/** GET the blob, hashing the stream; follows one redirect. */
async function download(server, repo, file) {
  const hash = createHash('sha256');
  let path = `/v2/${repo}/blobs/${file.digest}`;
  for (let hop = 0; hop < 3; hop++) {
    const res = await request(server.base, { path, sink: (c) => hash.update(c) });
    if ([301, 302, 303, 307, 308].includes(res.status) && res.headers.location) {
      path = res.headers.location;
      continue;
    }
    expectStatus(res, 200, `GET blob`);
    const digest = `sha256:${hash.digest('hex')}`;
    if (res.bytes !== file.size) throw new Error(`GET blob: ${res.bytes} bytes, expected ${file.size}`);
    if (digest !== file.digest) throw new Error(`GET blob: digest ${digest}, expected ${file.digest}`);
    return;
  }
  throw new Error('GET blob: too many redirects');
}

async function pushSmallBlob(server, repo, blob, agent) {
  const location = await startUpload(server, repo, agent);
  const res = await request(server.base, {
    method: 'PUT',
    path: withQuery(location, 'digest', blob.digest),
    headers: { 'Content-Type': OCTET },
    body: blob.data,
    agent,
  });
  expectStatus(res, 201, 'PUT small blob');
}

function loopError(what, r) {
  if (r.errors === 0) return;
  throw new Error(
    `${what}: ${r.errors} of ${r.errors + r.count} requests failed; first: ${r.firstError?.message}`,
  );
}

// ---- workloads --------------------------------------------------------------------------------------------

/** Times one run of `fn`, profiled; for the workloads the orchestrator repeats (`rep` is the repetition). */
async function timed(server, fn) {
  const { value: seconds, profile: p } = await profiled(server, async () => {
    const t0 = performance.now();
    await fn();
    return (performance.now() - t0) / 1000;
  });
  return { seconds, profile: p };
}

// Each repetition uploads different random content: a blob the server already holds could be short-cut.
export async function monolithic(server, ctx, rep) {
  if (rep === 0) await monolithicUpload(server, 'bench/warm', ctx.files.warm); // warm-up
  const file = ctx.files.mono[rep];
  const { seconds, profile: p } = await timed(server, () => monolithicUpload(server, 'bench/big', file));
  return { metrics: { monoMBps: file.size / 1e6 / seconds }, profile: p };
}

export async function chunked(server, ctx, rep) {
  if (rep === 0) await chunkedUpload(server, 'bench/warm-chunked', ctx.files.warm, ctx.sizes.chunk); // warm-up
  const file = ctx.files.chunked[rep];
  const { seconds, profile: p } = await timed(server, () =>
    chunkedUpload(server, 'bench/big', file, ctx.sizes.chunk),
  );
  return { metrics: { chunkedMBps: file.size / 1e6 / seconds }, profile: p };
}

export async function downloadWorkload(server, ctx, rep) {
  if (!server.downloadFile) {
    // Whichever big blob the upload workloads managed to store (else push one, untimed).
    const candidates = [...ctx.files.mono, ...ctx.files.chunked];
    for (const f of candidates) {
      const head = await request(server.base, { method: 'HEAD', path: `/v2/bench/big/blobs/${f.digest}` });
      if (head.status === 200) {
        server.downloadFile = f;
        break;
      }
    }
    if (!server.downloadFile) {
      await monolithicUpload(server, 'bench/big', candidates[0]);
      server.downloadFile = candidates[0];
    }
  }
  if (rep === 0) {
    // Warm-up, on the blob the upload workloads push first (pushed here, untimed, when they did not run).
    const warm = await request(server.base, {
      method: 'HEAD',
      path: `/v2/bench/warm/blobs/${ctx.files.warm.digest}`,
    });
    if (warm.status !== 200) await monolithicUpload(server, 'bench/warm', ctx.files.warm);
    await download(server, 'bench/warm', ctx.files.warm);
  }
  const file = server.downloadFile;
  const { seconds, profile: p } = await timed(server, () => download(server, 'bench/big', file));
  const rate = file.size / 1e6 / seconds;
  return { metrics: { downloadMBps: rate, ...(rep === 0 ? { downloadFirstMBps: rate } : {}) }, profile: p };
}

export async function smallBlobs(server, ctx) {
  const agent = keepAliveAgent();
  try {
    const warm = await runClosedLoop({
      concurrency: 32,
      items: ctx.smallBlobs.warm,
      op: (b) => pushSmallBlob(server, 'bench/small', b, agent),
    });
    loopError('warm-up', warm);
    const { value: r, profile: p } = await profiled(server, () =>
      runClosedLoop({
        concurrency: 32,
        items: ctx.smallBlobs.timed,
        op: (b) => pushSmallBlob(server, 'bench/small', b, agent),
      }),
    );
    loopError('small blobs', r);
    return {
      metrics: { smallBlobsPerSec: r.count / (r.elapsedMs / 1000), smallP99: percentile(r.latencies, 99) },
      profile: p,
    };
  } finally {
    agent.destroy();
  }
}

export async function headBlob(server, ctx) {
  const agent = keepAliveAgent();
  const blob = ctx.smallBlobs.head;
  try {
    await pushSmallBlob(server, 'bench/head', blob, agent);
    const path = `/v2/bench/head/blobs/${blob.digest}`;
    const op = async () => {
      const res = await request(server.base, { method: 'HEAD', path, agent, sink: 'discard' });
      if (res.status !== 200) throw new Error(`HEAD blob: HTTP ${res.status}`);
    };
    loopError('warm-up', await runClosedLoop({ concurrency: 32, durationMs: ctx.sizes.warmMs, op }));
    const { value: r, profile: p } = await profiled(server, () =>
      runClosedLoop({ concurrency: 32, durationMs: ctx.sizes.durationMs, op }),
    );
    loopError('HEAD blob', r);
    return {
      metrics: { headRps: r.count / (r.elapsedMs / 1000), headP99: percentile(r.latencies, 99) },
      profile: p,
    };
  } finally {
    agent.destroy();
  }
}

const MANIFEST_REPO = 'bench/manifests';

function makeManifests(config, layer, prefix, count) {
  return Array.from({ length: count }, (_, i) => {
    const body = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.data.length },
        layers: [{ mediaType: OCI_LAYER, digest: layer.digest, size: layer.data.length }],
        annotations: { 'org.example.bench.index': `${prefix}-${i}` },
      }),
    );
    return { tag: `${prefix}-${i}`, body, digest: sha256(body) };
  });
}

async function putManifest(server, m, agent) {
  const res = await request(server.base, {
    method: 'PUT',
    path: `/v2/${MANIFEST_REPO}/manifests/${m.tag}`,
    headers: { 'Content-Type': OCI_MANIFEST },
    body: m.body,
    agent,
  });
  expectStatus(res, 201, `PUT manifest ${m.tag}`);
  checkDigestHeader(res, m.digest);
}

/** Manifest PUTs by tag with 8 workers, then GETs by tag with 32 clients. */
export async function manifests(server, ctx) {
  const agent = keepAliveAgent();
  try {
    const configData = Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: [] },
        created: new Date(0).toISOString(),
      }),
    );
    const layerData = randomBytes(64 * 1024);
    const config = { data: configData, digest: sha256(configData) };
    const layer = { data: layerData, digest: sha256(layerData) };
    const cfg = JSON.parse(configData);
    cfg.rootfs.diff_ids = [layer.digest];
    config.data = Buffer.from(JSON.stringify(cfg));
    config.digest = sha256(config.data);
    await pushSmallBlob(server, MANIFEST_REPO, config, agent);
    await pushSmallBlob(server, MANIFEST_REPO, layer, agent);

    // The timed part lasts a fraction of a second, so without a real warm-up it would mostly measure how soon a
    // JIT compiles the push path (and every pooled connection prepares its statements): both servers get the
    // same untimed pushes first, to tags of their own.
    const warm = makeManifests(config, layer, 'warm', ctx.sizes.manifestWarm);
    loopError(
      'manifest PUT warm-up',
      await runClosedLoop({ concurrency: 8, items: warm, op: (m) => putManifest(server, m, agent) }),
    );
    // 200 pushes take a fifth of a second, so one pause (a collection, the scheduler) moves the result by a
    // third: the push is timed `reps` times, each to new tags, and the median taken.
    const rounds = [];
    for (let rep = 0; rep < ctx.sizes.reps; rep++) {
      const items = makeManifests(config, layer, `tag${rep}`, ctx.sizes.manifests);
      const { value: put, profile } = await profiled(server, () =>
        runClosedLoop({ concurrency: 8, items, op: (m) => putManifest(server, m, agent) }),
      );
      loopError('manifest PUT', put);
      rounds.push({ perSec: put.count / (put.elapsedMs / 1000), profile, items });
    }
    const byRate = [...rounds].sort((a, b) => a.perSec - b.perSec);
    const median = byRate[Math.floor(byRate.length / 2)];
    const timed = rounds[0].items;
    const putProfile = median.profile;

    let i = 0;
    const get = async () => {
      const m = timed[i++ % timed.length];
      const res = await request(server.base, {
        path: `/v2/${MANIFEST_REPO}/manifests/${m.tag}`,
        headers: { Accept: OCI_MANIFEST },
        agent,
        sink: 'discard',
      });
      if (res.status !== 200) throw new Error(`GET manifest ${m.tag}: HTTP ${res.status}`);
      if (res.bytes !== m.body.length)
        throw new Error(`GET manifest ${m.tag}: ${res.bytes} bytes, expected ${m.body.length}`);
    };
    loopError(
      'manifest GET warm-up',
      await runClosedLoop({ concurrency: 32, durationMs: ctx.sizes.warmMs, op: get }),
    );
    const { value: g, profile: getProfile } = await profiled(server, () =>
      runClosedLoop({ concurrency: 32, durationMs: ctx.sizes.durationMs, op: get }),
    );
    loopError('manifest GET', g);
    return {
      parts: {
        manifestPut: {
          metrics: { manifestPutPerSec: median.perSec },
          profile: putProfile,
        },
        manifestGet: {
          metrics: {
            manifestGetRps: g.count / (g.elapsedMs / 1000),
            manifestGetP99: percentile(g.latencies, 99),
          },
          profile: getProfile,
        },
      },
    };
  } finally {
    agent.destroy();
  }
}

function runSkopeo(args, timeoutMs = 300_000) {
  return new Promise((resolve, reject) => {
    const child = spawn('skopeo', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr = (stderr + c).slice(-2000)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else
        reject(
          new Error(
            `skopeo ${args[0]} failed (${code ?? signal}): ${stderr.trim().split('\n').slice(-2).join(' ').slice(0, 300)}`,
          ),
        );
    });
  });
}

// --preserve-digests and --dest-oci-accept-uncompressed-layers keep skopeo from gzip-compressing the random,
// uncompressed layers on the way (it would otherwise spend its time in gzip, not in the registry).
function skopeoCopy(ctx, args) {
  return runSkopeo(['copy', '--quiet', '--policy', ctx.skopeo.policy, '--preserve-digests', ...args]);
}

/** The image of an OCI layout pushed to `bench/<repository>:latest` on the server. */
function pushLayout(server, ctx, layout, repository) {
  return skopeoCopy(ctx, [
    '--dest-tls-verify=false',
    `oci:${layout.dir}:latest`,
    `docker://127.0.0.1:${server.port}/bench/${repository}:latest`,
  ]);
}

// Each push repetition pushes a different image (its own random layers) to its own repository.
export async function skopeoPush(server, ctx, rep) {
  const layout = ctx.skopeo.layouts[rep];
  const { seconds, profile: p } = await timed(server, () => pushLayout(server, ctx, layout, `img-${rep}`));
  return { metrics: { skopeoPushSec: seconds }, profile: p };
}

export async function skopeoPull(server, ctx, rep) {
  // Each repetition pulls a different one of the pushed images.
  const i = Math.min(rep, ctx.skopeo.layouts.length - 1);
  const layout = ctx.skopeo.layouts[i];
  const out = join(ctx.tmp, `pulled-${server.name}`);
  rmSync(out, { recursive: true, force: true });
  try {
    const { seconds, profile: p } = await timed(server, () =>
      skopeoCopy(ctx, [
        '--dest-oci-accept-uncompressed-layers',
        '--src-tls-verify=false',
        `docker://127.0.0.1:${server.port}/bench/img-${i}:latest`,
        `oci:${out}:latest`,
      ]),
    );
    const manifest = layout.manifestDigest.slice('sha256:'.length);
    if (!existsSync(join(out, 'blobs', 'sha256', manifest)))
      throw new Error('pulled image lacks the pushed manifest');
    return { metrics: { skopeoPullSec: seconds }, profile: p };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

/**
 * Large-object Strata only, after its skopeo rounds: `racers` identical pushes of a new image at once, into one
 * repository (each client finds the blobs missing and uploads them, so every write but one is discarded; the
 * first run's image, since later runs find its blobs),
 * then one run of the storage maintenance, then the database's large-object bytes against the live ones. The
 * maintenance is the driver's own `maintain()` (what the storage-maintenance job calls, without its job lock and
 * event), loaded from the server's build and run on a pool of its own: the bench server runs with STRATA_JOBS=false,
 * and waiting for the job's interval would only add time.
 */
export async function storageSize(server, ctx, _rep, { root, racers = 2 }) {
  const layout = ctx.skopeo.race;
  const race = await timed(server, () =>
    Promise.all(Array.from({ length: racers }, () => pushLayout(server, ctx, layout, 'race'))),
  );
  const require = createRequire(join(root, 'package.json'));
  const { createDb } = require(join(root, 'dist/libs/db/src'));
  const { LargeObjectDriver } = require(join(root, 'dist/libs/storage/src/large-object.driver.js'));
  const pg = require('pg');
  const pool = new pg.Pool({ connectionString: server.db.url, max: 4 });
  const db = createDb(pool);
  try {
    const sizes = async () => {
      const r = await pool.query(`
        WITH named AS (
          SELECT o.loid, o.size FROM storage_objects o JOIN blobs b ON b.storage_key = o.key WHERE o.loid IS NOT NULL
          UNION
          SELECT p.loid, p.size FROM storage_objects o JOIN blobs b ON b.storage_key = o.key,
            unnest(o.parts, o.part_sizes) AS p(loid, size)
        )
        , every AS (
          SELECT loid, size FROM storage_objects WHERE loid IS NOT NULL
          UNION
          SELECT p.loid, p.size FROM storage_objects o, unnest(o.parts, o.part_sizes) AS p(loid, size)
        )
        SELECT (SELECT coalesce(sum(size), 0) FROM named)::float8 AS live,
          (SELECT coalesce(sum(size), 0) FROM every)::float8 AS stored,
          (SELECT count(*) FROM pg_largeobject_metadata)::float8 AS objects,
          pg_total_relation_size('pg_largeobject')::float8 AS lo,
          pg_database_size(current_database())::float8 AS db`);
      return r.rows[0];
    };
    // Backends report their dead rows to the statistics maintain() reads about a second after their last
    // statement: wait for the count to settle, as a job running later would see it.
    let dead = -1;
    for (let i = 0; i < 20; i++) {
      const r = await pool.query(
        `SELECT n_dead_tup::float8 AS n FROM pg_stat_all_tables WHERE relid = 'pg_largeobject'::regclass`,
      );
      if (r.rows[0].n === dead) break;
      dead = r.rows[0].n;
      await new Promise((resolve) => setTimeout(resolve, 1500));
    }
    const before = await sizes();
    const t0 = performance.now();
    const report = await new LargeObjectDriver(db).maintain();
    const maintainSec = (performance.now() - t0) / 1000;
    const after = await sizes();
    return {
      metrics: {
        raceSec: race.seconds,
        liveMB: after.live / 1e6,
        storedMB: after.stored / 1e6,
        objects: after.objects,
        loMB: after.lo / 1e6,
        dbMB: after.db / 1e6,
        loBeforeMB: before.lo / 1e6,
        maintainSec,
        orphans: report.orphans,
        vacuumed: report.vacuumed.length,
        deadRows: dead,
      },
      profile: race.profile,
    };
  } finally {
    await db.destroy();
  }
}
