#!/usr/bin/env node
// Strata vs. the reference registry (Debian's docker-registry, distribution 2.8): the same workloads against
// each, one server loaded at a time, printed as one markdown table (also written to bench/results.md).
//   npm run bench                 full run (~5–10 min on 2 cores)
//   BENCH_QUICK=1                 small sizes, for a smoke run (~1 min)
//   BENCH_SERVERS=strata          one side only (or reference, or strata-lo: Strata on STRATA_STORAGE=postgres,
//                                 which runs the skopeo workloads only and is compared with the filesystem Strata)
//   BENCH_SEQUENTIAL=1            one server's whole suite, then the other's (default: workload by workload)
//   BENCH_REPS=3                  repetitions of uploads, download and skopeo (median reported)
//   BENCH_ONLY=small,manifests    only the workloads whose names contain one of these words
//   BENCH_QUIET_WAIT=<seconds>    how long to wait, before each workload, for other jobs on the machine to go quiet
//   BENCH_STRATA_ENV="K=V …"      extra settings for the Strata server (e.g. STRATA_DIRECT_IO=false)
//   BENCH_LO_BASE=/path/to/checkout  also runs a second large-object Strata built from that checkout (A/B, same run)
//   BENCH_AUTH=1                  the authentication mode: bench/auth.mjs (bearer tokens vs auth off vs htpasswd)
//   BENCH_UI=1                    the web UI's API on 10,000 repositories and 100,000 tags: bench/ui.mjs
//   DATABASE_URL=postgres://…     PostgreSQL server to create the throw-away bench database on
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildOciLayout } from './lib/oci-layout.mjs';
import {
  createBenchDatabase,
  ensureTools,
  startReference,
  startStrata,
  stopProcess,
  toolVersions,
} from './lib/servers.mjs';
import { MiB, peakRssMiB, sha256, waitQuiet, writeRandomFile } from './lib/util.mjs';
import * as W from './lib/workloads.mjs';

// BENCH_AUTH=1: the authentication mode instead (bench/auth.mjs).
if (/^(1|true|yes)$/i.test(process.env.BENCH_AUTH ?? '')) {
  await import('./auth.mjs');
  process.exit(process.exitCode ?? 0);
}
// BENCH_UI=1: the web UI's API (bench/ui.mjs).
if (/^(1|true|yes)$/i.test(process.env.BENCH_UI ?? '')) {
  await import('./ui.mjs');
  process.exit(process.exitCode ?? 0);
}

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..');
const QUICK = /^(1|true|yes)$/i.test(process.env.BENCH_QUICK ?? '');
// Seconds to wait, before each workload, for other processes on the machine to go quiet.
const QUIET_WAIT_S = Number(process.env.BENCH_QUIET_WAIT ?? (QUICK ? 3 : 15));
// Default: both servers up, each workload run on one, then on the other. BENCH_SEQUENTIAL=1: one server's
// whole suite, then the other's, with only one server process alive at a time.
const SEQUENTIAL = /^(1|true|yes)$/i.test(process.env.BENCH_SEQUENTIAL ?? '');
const SERVERS = (process.env.BENCH_SERVERS ?? 'reference,strata,strata-lo').split(',').map((s) => s.trim());
const LO_BASE = process.env.BENCH_LO_BASE?.trim() || null;
if (LO_BASE && SERVERS.includes('strata-lo')) SERVERS.push('strata-lo-base');

const SIZES = QUICK
  ? {
      big: 64 * MiB,
      warm: 4 * MiB,
      chunk: 8 * MiB,
      small: 200,
      smallWarm: 20,
      durationMs: 3000,
      warmMs: 500,
      manifests: 50,
      manifestWarm: 10,
      layers: 4,
      layerSize: 8 * MiB,
    }
  : {
      big: 512 * MiB,
      warm: 16 * MiB,
      chunk: 8 * MiB,
      small: 2000,
      smallWarm: 100,
      durationMs: 10_000,
      warmMs: 1000,
      manifests: 200,
      // Untimed pushes first, on both servers: Strata's push path keeps getting faster while V8 compiles it, for
      // the first thousand or so (a standalone run: 821 PUT/s over the first 500, 1.7-2.3k after 4,500). With 100,
      // the timed 200 measured a half-compiled server.
      manifestWarm: 1000,
      layers: 4,
      layerSize: 50 * 1000 * 1000,
    };
// Repetitions of the short, large-transfer workloads (uploads, download, skopeo); the median is reported.
SIZES.reps = Math.max(1, Number(process.env.BENCH_REPS ?? 3));

const bigLabel = `${SIZES.big / MiB} MiB`;
const med = SIZES.reps > 1 ? `, median of ${SIZES.reps}` : '';
const imageLabel = `~${Math.round((SIZES.layers * SIZES.layerSize) / 1e6)} MB`;

// metric key → how it is shown and judged. higher: bigger is better (ratio strata/ref), else ratio ref/strata.
const METRICS = [
  {
    key: 'monoMBps',
    label: `monolithic upload, ${bigLabel}${med} (MB/s)`,
    higher: true,
    target: 1.15,
    fmt: 1,
  },
  {
    key: 'chunkedMBps',
    label: `chunked upload, ${bigLabel} in 8 MiB PATCHes${med} (MB/s)`,
    higher: true,
    target: 1.3,
    fmt: 1,
  },
  {
    key: 'downloadMBps',
    label: `download ${bigLabel} + digest check${med} (MB/s)`,
    higher: true,
    target: 1.0,
    fmt: 1,
  },
  {
    // Part of the median above; shown alone because it is the one that reads a blob not read since its push
    // (Strata writes a blob past its first 64 MiB around the page cache; the reference through it).
    key: 'downloadFirstMBps',
    label: `download: the first, of a blob not read since its push (MB/s)`,
    higher: true,
    target: null,
    fmt: 1,
  },
  {
    key: 'smallBlobsPerSec',
    label: `${SIZES.small} × 4 KiB blobs, 32 clients (blobs/s)`,
    higher: true,
    target: 3,
    fmt: 0,
  },
  {
    key: 'smallP99',
    label: `${SIZES.small} × 4 KiB blobs: p99 latency per blob (ms)`,
    higher: false,
    target: null,
    fmt: 2,
  },
  {
    key: 'headRps',
    label: `HEAD blob, 32 clients, ${SIZES.durationMs / 1000} s (req/s)`,
    higher: true,
    target: 4,
    fmt: 0,
  },
  { key: 'headP99', label: 'HEAD blob: p99 latency (ms)', higher: false, target: null, fmt: 2 },
  {
    key: 'manifestPutPerSec',
    label: `PUT ${SIZES.manifests} tagged manifests, 8 workers${med} (PUT/s)`,
    higher: true,
    target: 2,
    fmt: 0,
  },
  {
    key: 'manifestGetRps',
    label: `GET manifest by tag, 32 clients, ${SIZES.durationMs / 1000} s (req/s)`,
    higher: true,
    target: 4,
    fmt: 0,
  },
  {
    key: 'manifestGetP99',
    label: 'GET manifest by tag: p99 latency (ms)',
    higher: false,
    target: null,
    fmt: 2,
  },
  {
    key: 'skopeoPushSec',
    label: `skopeo push, ${imageLabel} image${med} (s)`,
    higher: false,
    target: 1.0,
    fmt: 2,
  },
  {
    key: 'skopeoPullSec',
    label: `skopeo pull, ${imageLabel} image${med} (s)`,
    higher: false,
    target: 1.0,
    fmt: 2,
  },
  { key: 'peakRssMiB', label: 'server peak RSS, VmHWM (MiB)', higher: false, target: null, fmt: 0 },
];

// Rows for Strata with STRATA_STORAGE=postgres (large objects), against the filesystem Strata of the same run: the
// "reference" column shows the filesystem Strata, the ratio is its time over the large-object one, and the
// target ≥ 0.67× reads "at most 1.5× the filesystem driver's time". Memory is judged by itself (≤ 150 MiB).
const LO_METRICS = [
  {
    key: 'skopeoPushSec',
    label: `skopeo push, ${imageLabel} image${med}, STRATA_STORAGE=postgres (s; vs filesystem Strata)`,
    target: 1 / 1.5,
    fmt: 2,
  },
  {
    key: 'skopeoPullSec',
    label: `skopeo pull, ${imageLabel} image${med}, STRATA_STORAGE=postgres (s; vs filesystem Strata)`,
    target: 1 / 1.5,
    fmt: 2,
  },
  { key: 'peakRssMiB', label: 'STRATA_STORAGE=postgres server peak RSS, VmHWM (MiB)', limit: 150, fmt: 0 },
  {
    key: 'raceSec',
    label: `skopeo push race: 2 identical pushes at once of a new ~${Math.round((2 * SIZES.layerSize) / 1e6)} MB image, STRATA_STORAGE=postgres (s)`,
    info: true,
    fmt: 2,
  },
  // After the pushes, the race and one run of BlobStorage.maintain (vacuumlo's rule, then VACUUM): the bytes
  // PostgreSQL holds for large objects against the bytes of the large objects a blob references.
  {
    key: 'loMB',
    over: 'liveMB',
    label:
      'pg_largeobject after maintenance (heap + index, MB; live: bytes of the large objects blobs reference)',
    limit: 1.2,
    fmt: 0,
  },
  {
    key: 'dbMB',
    over: 'liveMB',
    label: 'whole database after maintenance (MB; vs live)',
    info: true,
    fmt: 0,
  },
  {
    key: 'loBeforeMB',
    over: 'liveMB',
    label: 'pg_largeobject before maintenance (MB; vs live)',
    info: true,
    fmt: 0,
  },
];
/** The workloads the large-object Strata runs. */
const LO_WORKLOADS = new Set(['skopeo push', 'skopeo pull', 'skopeo race and storage size']);

// workload name → function and the metric keys it yields (a failure marks all of them).
const ALL_WORKLOADS = [
  { name: 'monolithic upload', fn: W.monolithic, repeat: true, keys: ['monoMBps'] },
  { name: 'chunked upload', fn: W.chunked, repeat: true, keys: ['chunkedMBps'] },
  { name: 'download', fn: W.downloadWorkload, repeat: true, keys: ['downloadMBps', 'downloadFirstMBps'] },
  { name: 'small blobs', fn: W.smallBlobs, keys: ['smallBlobsPerSec', 'smallP99'] },
  { name: 'HEAD blob', fn: W.headBlob, keys: ['headRps', 'headP99'] },
  {
    name: 'manifests',
    fn: W.manifests,
    keys: ['manifestPutPerSec', 'manifestGetRps', 'manifestGetP99'],
    parts: { manifestPut: 'manifest PUT', manifestGet: 'manifest GET' },
  },
  { name: 'skopeo push', fn: W.skopeoPush, repeat: true, keys: ['skopeoPushSec'] },
  { name: 'skopeo pull', fn: W.skopeoPull, repeat: true, keys: ['skopeoPullSec'] },
  {
    name: 'skopeo race and storage size',
    fn: W.storageSize,
    loOnly: true,
    keys: [
      'raceSec',
      'liveMB',
      'loMB',
      'dbMB',
      'loBeforeMB',
      'maintainSec',
      'orphans',
      'vacuumed',
      'deadRows',
    ],
  },
];

const ONLY = (process.env.BENCH_ONLY ?? '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const WORKLOADS = ONLY.length
  ? ALL_WORKLOADS.filter((w) => ONLY.some((o) => w.name.includes(o)))
  : ALL_WORKLOADS;

const log = (msg) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

// ---- cleanup, also on failure and Ctrl-C ------------------------------------------------------------------

const cleanups = [];
let cleaning = null;
function cleanup() {
  cleaning ??= (async () => {
    for (const fn of cleanups.splice(0).reverse()) {
      try {
        await fn();
      } catch (e) {
        log(`cleanup: ${e.message}`);
      }
    }
  })();
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`${sig}: cleaning up`);
    cleanup().finally(() => process.exit(130));
  });
}

// ---- the run ----------------------------------------------------------------------------------------------

async function prepare(tmp) {
  const reps = SIZES.reps;
  log(
    `writing random test data to ${tmp} (${((SIZES.warm + 2 * reps * (SIZES.big + (SIZES.layers * SIZES.layerSize) / 2)) / 1e9).toFixed(1)} GB) …`,
  );
  const randomFile = async (name, size) => {
    const path = join(tmp, `${name}.bin`);
    return { path, size, digest: await writeRandomFile(path, size) };
  };
  const files = { warm: await randomFile('warm', SIZES.warm), mono: [], chunked: [] };
  for (let i = 0; i < reps; i++) {
    files.mono.push(await randomFile(`mono-${i}`, SIZES.big));
    files.chunked.push(await randomFile(`chunked-${i}`, SIZES.big));
  }
  const small = (n) =>
    Array.from({ length: n }, () => {
      const data = randomBytes(4096);
      return { data, digest: sha256(data) };
    });
  const smallBlobs = { warm: small(SIZES.smallWarm), timed: small(SIZES.small), head: small(1)[0] };

  const layouts = [];
  for (let i = 0; i < reps; i++) {
    layouts.push(
      await buildOciLayout(join(tmp, `image-${i}`), { layers: SIZES.layers, layerSize: SIZES.layerSize }),
    );
  }
  // The race's own image (new layers: skopeo would otherwise mount the pushed ones from its blob-info cache).
  const race = SERVERS.some((n) => n.startsWith('strata-lo'))
    ? await buildOciLayout(join(tmp, 'image-race'), { layers: 2, layerSize: SIZES.layerSize })
    : null;
  const policy = join(tmp, 'policy.json');
  writeFileSync(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  return { tmp, files, smallBlobs, sizes: SIZES, skopeo: { layouts, race, policy } };
}

/** Starts one server; a server that does not start gets every metric as an error. */
async function openServer(name, ctx) {
  const state = {
    name,
    server: undefined,
    db: undefined,
    samples: {},
    profileParts: {},
    result: { metrics: {}, errors: {}, profiles: {} },
  };
  const dir = join(ctx.tmp, name);
  mkdirSync(dir, { recursive: true });
  state.root = name === 'strata-lo-base' ? resolve(LO_BASE) : ROOT;
  state.close = async () => {
    const { server, db } = state;
    state.server = undefined;
    state.db = undefined;
    if (server) await stopProcess(server.child);
    if (db) await db.drop();
  };
  cleanups.push(state.close);
  try {
    if (name === 'reference') state.server = await startReference({ dir, log });
    else {
      state.db = await createBenchDatabase();
      log(`database ${state.db.name}`);
      state.server = await startStrata({
        root: state.root,
        dir,
        db: state.db,
        log,
        name,
        env: name.startsWith('strata-lo') ? { STRATA_STORAGE: 'postgres' } : {},
      });
    }
  } catch (e) {
    log(`${name} did not start: ${e.message}`);
    for (const w of WORKLOADS)
      for (const k of w.keys) state.result.errors[k] = `server did not start: ${e.message}`;
    state.result.errors.peakRssMiB = 'server did not start';
    await state.close();
  }
  return state;
}

/** One run of a workload (one repetition of a repeated one); samples are kept until finish(). */
async function runWorkload(state, w, ctx, rep) {
  const { name, server, result } = state;
  if (name.startsWith('strata-lo') && !LO_WORKLOADS.has(w.name)) return;
  if (w.loOnly && !name.startsWith('strata-lo')) return;
  if (!server || w.keys.some((k) => result.errors[k])) return;
  if (server.child.exitCode !== null || server.child.signalCode !== null) {
    for (const k of w.keys)
      result.errors[k] = `server died (${server.child.exitCode ?? server.child.signalCode})`;
    return;
  }
  // Write back what earlier workloads left dirty in the page cache, so this one does not pay for it.
  execFileSync('sync');
  const busy = await waitQuiet(QUIET_WAIT_S * 1000);
  if (busy >= 15)
    log(`machine still ${Math.round(busy)}% busy with other work after ${QUIET_WAIT_S} s; measuring anyway`);
  const what = `${name}: ${w.name}${rep === undefined ? '' : ` #${rep + 1}`}`;
  log(`${what} …`);
  try {
    const out = await w.fn(server, ctx, rep, { root: state.root });
    const parts = out.parts ? Object.entries(out.parts).map(([k, v]) => [w.parts[k], v]) : [[w.name, out]];
    for (const [label, part] of parts) {
      for (const [k, v] of Object.entries(part.metrics)) (state.samples[k] ??= []).push(v);
      (state.profileParts[label] ??= []).push(part.profile);
    }
    log(
      `${what}: ${JSON.stringify(Object.fromEntries(parts.flatMap(([, p]) => Object.entries(p.metrics)).map(([k, v]) => [k, round(v)])))}`,
    );
  } catch (e) {
    log(`${what} FAILED: ${e.message}`);
    for (const k of w.keys) result.errors[k] ??= e.message;
  }
}

/** Medians of the samples; profiles merged over all repetitions (weighted by their wall time). */
function finish(state) {
  const { result } = state;
  for (const [k, xs] of Object.entries(state.samples)) {
    if (!result.errors[k]) result.metrics[k] = [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  }
  for (const [label, ps] of Object.entries(state.profileParts)) {
    const wall = ps.reduce((t, p) => t + p.wall, 0);
    const merged = { wall };
    for (const key of Object.keys(ps[0])) {
      if (key === 'wall') continue;
      merged[key] = key.endsWith('MB')
        ? ps.reduce((t, p) => t + p[key], 0)
        : key === 'peakRssMiB'
          ? Math.max(...ps.map((p) => p[key]))
          : ps.reduce((t, p) => t + p[key] * p.wall, 0) / (wall || 1);
    }
    result.profiles[label] = merged;
  }
}

async function closeServer(state) {
  const { name, server, result } = state;
  finish(state);
  if (server) {
    // The largest of each workload's own peak (VmHWM is reset before each) and what is left of the last one.
    result.metrics.peakRssMiB = Math.max(peakRssMiB(server.pid), server.peakRssMiB ?? 0);
    if (server.child.exitCode !== null || server.child.signalCode !== null) {
      result.errors.peakRssMiB = 'server died';
      log(`${name} log tail:\n${readFileSync(server.logFile, 'utf8').slice(-2000)}`);
    }
  }
  await state.close();
}

const round = (x) => (typeof x === 'number' ? Math.round(x * 100) / 100 : x);

function fmtNum(x, digits) {
  if (x === undefined || Number.isNaN(x)) return '—';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

const cell = (s) => String(s).replace(/\|/g, '\\|').replace(/\n/g, ' ');
const short = (msg) => (msg.length > 70 ? `${msg.slice(0, 67)}…` : msg);

function table(results) {
  const ref = results.reference ?? { metrics: {}, errors: {} };
  const str = results.strata ?? { metrics: {}, errors: {} };
  const rows = [
    '| metric | reference | strata | ratio | target | pass/fail |',
    '| --- | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const m of METRICS) {
    const show = (r) =>
      r.errors[m.key] ? `error: ${short(r.errors[m.key])}` : fmtNum(r.metrics[m.key], m.fmt);
    const a = ref.metrics[m.key];
    const b = str.metrics[m.key];
    const ok = (x) => typeof x === 'number' && Number.isFinite(x) && x > 0;
    const ratio = ok(a) && ok(b) ? (m.higher ? b / a : a / b) : undefined;
    const ratioLabel = m.higher ? 'strata/ref' : 'ref/strata';
    let verdict;
    if (str.errors[m.key] || ref.errors[m.key]) verdict = 'error';
    else if (ratio === undefined) verdict = 'n/a';
    else if (m.target === null) verdict = 'info';
    else verdict = ratio >= m.target ? 'pass' : '**FAIL**';
    rows.push(
      `| ${cell(m.label)} | ${cell(show(ref))} | ${cell(show(str))} | ${ratio === undefined ? '—' : `${ratio.toFixed(2)}× (${ratioLabel})`} | ${m.target === null ? '—' : `≥ ${m.target}×`} | ${verdict} |`,
    );
  }
  for (const [name, title] of [
    ['strata-lo', 'STRATA_STORAGE=postgres'],
    ['strata-lo-base', `STRATA_STORAGE=postgres, built from ${LO_BASE}`],
  ]) {
    const lo = results[name];
    if (!lo) continue;
    rows.push(
      `| **${cell(title)}** (reference column: the filesystem Strata above) | filesystem | postgres | fs/postgres | | |`,
    );
    for (const m of LO_METRICS) {
      const show = (r) =>
        r.errors[m.key] ? `error: ${short(r.errors[m.key])}` : fmtNum(r.metrics[m.key], m.fmt);
      const a = str.metrics[m.key];
      const b = lo.metrics[m.key];
      const ok = (x) => typeof x === 'number' && Number.isFinite(x) && x > 0;
      let ratio;
      let verdict;
      let target;
      if (m.over) {
        const live = lo.metrics[m.over];
        target = m.info ? '—' : `≤ ${m.limit}×`;
        const r = ok(b) && ok(live) ? b / live : undefined;
        ratio = r === undefined ? '—' : `${r.toFixed(2)}× (of live)`;
        if (lo.errors[m.key]) verdict = 'error';
        else if (r === undefined) verdict = 'n/a';
        else verdict = m.info ? 'info' : r <= m.limit ? 'pass' : '**FAIL**';
        rows.push(
          `| ${cell(m.label)} | ${ok(live) ? `live ${fmtNum(live, m.fmt)}` : '—'} | ${cell(show(lo))} | ${ratio} | ${target} | ${verdict} |`,
        );
        continue;
      }
      if (m.info) {
        target = '—';
        verdict = lo.errors[m.key] ? 'error' : ok(b) ? 'info' : 'n/a';
        ratio = '—';
      } else if (m.limit !== undefined) {
        target = `≤ ${m.limit}`;
        verdict = lo.errors[m.key] ? 'error' : !ok(b) ? 'n/a' : b <= m.limit ? 'pass' : '**FAIL**';
        ratio = '—';
      } else {
        target = `≥ ${m.target.toFixed(2)}× (≤ 1.5× fs)`;
        const r = ok(a) && ok(b) ? a / b : undefined;
        ratio = r === undefined ? '—' : `${r.toFixed(2)}× (fs/postgres)`;
        if (lo.errors[m.key] || str.errors[m.key]) verdict = 'error';
        else if (r === undefined) verdict = 'n/a';
        else verdict = r >= m.target ? 'pass' : '**FAIL**';
      }
      rows.push(
        `| ${cell(m.label)} | ${m.limit !== undefined || m.info ? '—' : cell(show(str))} | ${cell(show(lo))} | ${ratio} | ${target} | ${verdict} |`,
      );
    }
  }
  return rows.join('\n');
}

function profileTable(results) {
  const rows = [
    '| workload | server | wall (s) | server CPU | PostgreSQL CPU | bench client CPU | skopeo CPU | other processes CPU | machine idle | iowait | steal | server disk write (MB) | server peak RSS (MiB) |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  const labels = [...new Set(Object.values(results).flatMap((r) => Object.keys(r.profiles)))];
  const pct = (x) => `${Math.round(x)}%`;
  for (const label of labels) {
    for (const [name, r] of Object.entries(results)) {
      const p = r.profiles[label];
      if (!p) continue;
      rows.push(
        `| ${label} | ${name} | ${p.wall.toFixed(2)} | ${pct(p.server)} | ${pct(p.pg)} | ${pct(p.client)} | ${pct(p.children)} | ${pct(p.other)} | ${pct(p.idle)} | ${pct(p.iowait)} | ${pct(p.steal)} | ${Math.round(p.diskWriteMB)} | ${Math.round(p.peakRssMiB)} |`,
      );
    }
  }
  return rows.join('\n');
}

function errorList(results) {
  const lines = [];
  for (const [name, r] of Object.entries(results)) {
    const seen = new Set();
    for (const msg of Object.values(r.errors)) {
      if (seen.has(msg)) continue;
      seen.add(msg);
      lines.push(`- ${name}: ${msg.split('\n')[0]}`);
    }
  }
  return lines.join('\n');
}

async function main() {
  ensureTools(log);
  const versions = toolVersions();
  const tmp = mkdtempSync(join(tmpdir(), 'strata-bench-'));
  cleanups.push(() => rmSync(tmp, { recursive: true, force: true }));
  const started = Date.now();
  const ctx = await prepare(tmp);

  const results = {};
  const names = ['reference', 'strata', 'strata-lo', 'strata-lo-base'].filter((n) => SERVERS.includes(n));
  if (SEQUENTIAL) {
    for (const name of names) {
      const state = await openServer(name, ctx);
      for (const w of WORKLOADS) {
        if (!w.repeat) await runWorkload(state, w, ctx);
        else for (let rep = 0; rep < SIZES.reps; rep++) await runWorkload(state, w, ctx, rep);
      }
      await closeServer(state);
      results[name] = state.result;
    }
  } else {
    // Both up, loaded one at a time, workload by workload: on a shared machine, load from other jobs then
    // hits both sides of a comparison alike rather than whichever server happened to run during it.
    const states = [];
    for (const name of names) states.push(await openServer(name, ctx));
    // Repetitions alternate between the servers too, so a passing slowdown of the machine hits both alike.
    for (const w of WORKLOADS) {
      if (!w.repeat) for (const state of states) await runWorkload(state, w, ctx);
      else
        for (let rep = 0; rep < SIZES.reps; rep++)
          for (const state of states) await runWorkload(state, w, ctx, rep);
    }
    for (const state of states) {
      await closeServer(state);
      results[state.name] = state.result;
    }
  }

  let commit = '?';
  try {
    commit = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no'], {
      encoding: 'utf8',
    }).trim();
    if (dirty) commit += ' (with uncommitted changes)';
  } catch {
    // not a git checkout
  }
  const header = [
    `# Strata benchmark${QUICK ? ' (BENCH_QUICK: reduced sizes)' : ''}`,
    '',
    `${new Date().toISOString()} · strata ${commit} · node ${process.version} · reference: ${versions.registry} · ${versions.skopeo} · ` +
      `${cpus().length} × ${cpus()[0]?.model.trim() ?? 'CPU'} · ${SEQUENTIAL ? 'one server after the other' : 'workload by workload, reference then strata'} · ` +
      `${Math.round((Date.now() - started) / 1000)} s` +
      (process.env.BENCH_STRATA_ENV?.trim()
        ? ` · **Strata settings: ${process.env.BENCH_STRATA_ENV.trim()}**`
        : ''),
    '',
    'Ratio: strata/reference for throughput, reference/strata for times, latencies and memory (so > 1 is always Strata ahead). ' +
      'Targets apply to the headline metric of each workload; p99, first-download and memory rows are for information.',
    '',
  ].join('\n');
  const errors = errorList(results);
  const doc = [
    header,
    table(results),
    '',
    '## Where the time goes',
    '',
    'CPU as % of one core over the timed part, all repetitions (the machine has ' +
      `${cpus().length}); machine idle and iowait as % of all cores; PostgreSQL is the backends of the bench database plus the server's background processes; ` +
      '"other processes" is busy CPU none of those account for (kernel softirq work, or other jobs on a shared machine: numbers with much of it are suspect).',
    '',
    profileTable(results),
    '',
    ...(errors ? ['## Errors', '', errors, ''] : []),
  ].join('\n');
  process.stdout.write(`${doc}\n`);
  writeFileSync(join(HERE, 'results.md'), `${doc}\n`);
  log(`written ${join(HERE, 'results.md')}`);
}

main()
  .then(() => cleanup())
  .then(() => process.exit(0))
  .catch(async (e) => {
    log(`failed: ${e.stack ?? e.message}`);
    await cleanup();
    process.exit(1);
  });
