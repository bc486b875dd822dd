// BENCH_AUTH=1 npm run bench: what authentication costs the hot read paths (issue 13), each server alone:
//   - the reference registry with its htpasswd (bcrypt) authentication, clients sending Basic credentials;
//   - Strata with STRATA_AUTH=off, and with STRATA_AUTH=token, clients sending a bearer token as docker does;
//   - HEAD blob and GET manifest by tag, 32 clients; targets: token Strata ≥ 0.85× auth-off Strata, ≥ 4× reference;
//   - the token issue rate (GET /auth/token with a correct password, 8 clients);
//   - a login storm: HEAD rate with 8 clients logging in in a loop meanwhile, on a Strata that verifies argon2id at
//     every login (STRATA_LOGIN_CACHE=false), against the same server's HEAD rate alone.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bcrypt } from 'hash-wasm';
import { randomBytes } from 'node:crypto';
import {
  createBenchDatabase,
  ensureTools,
  startReference,
  startStrata,
  stopProcess,
} from './lib/servers.mjs';
import { expectStatus, percentile, request, runClosedLoop, sha256, waitQuiet } from './lib/util.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const QUICK = /^(1|true|yes)$/i.test(process.env.BENCH_QUICK ?? '');
const DURATION_MS = QUICK ? 3000 : 10_000;
const WARM_MS = QUICK ? 500 : 1000;
const QUIET_WAIT_S = Number(process.env.BENCH_QUIET_WAIT ?? (QUICK ? 3 : 15));
const USER = 'bench';
const PASSWORD = 'bench-password';
const log = (msg) => process.stderr.write(`[bench auth ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
const refBasic = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;
const agent = () => new http.Agent({ keepAlive: true, maxSockets: 48, maxFreeSockets: 48 });

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

/** One blob and a manifest tagged `v1` in bench/auth, pushed with `headers`. */
async function seed(base, headers, a) {
  const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const layer = randomBytes(4096);
  for (const b of [config, layer]) {
    const post = await request(base, {
      method: 'POST',
      path: '/v2/bench/auth/blobs/uploads/',
      headers,
      agent: a,
    });
    expectStatus(post, 202, 'POST upload');
    const loc = new URL(post.headers.location, base);
    loc.searchParams.set('digest', sha256(b));
    const put = await request(base, {
      method: 'PUT',
      path: loc.pathname + loc.search,
      headers: { ...headers, 'Content-Type': 'application/octet-stream' },
      body: b,
      agent: a,
    });
    expectStatus(put, 201, 'PUT blob');
  }
  const manifest = JSON.stringify({
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
  });
  const put = await request(base, {
    method: 'PUT',
    path: '/v2/bench/auth/manifests/v1',
    headers: { ...headers, 'Content-Type': OCI_MANIFEST },
    body: manifest,
    agent: a,
  });
  expectStatus(put, 201, 'PUT manifest');
  return sha256(layer);
}

async function loop(what, concurrency, op) {
  await runClosedLoop({ concurrency, durationMs: WARM_MS, op });
  const r = await runClosedLoop({ concurrency, durationMs: DURATION_MS, op });
  if (r.errors)
    throw new Error(`${what}: ${r.errors} of ${r.count + r.errors} failed; first: ${r.firstError?.message}`);
  return { rps: r.count / (r.elapsedMs / 1000), p99: percentile(r.latencies, 99) };
}

/** HEAD blob and GET manifest, 32 clients, with `headers` on every request. */
async function reads(base, headers, layer) {
  const a = agent();
  try {
    const head = await loop('HEAD blob', 32, async () => {
      const res = await request(base, {
        method: 'HEAD',
        path: `/v2/bench/auth/blobs/${layer}`,
        headers,
        agent: a,
        sink: 'discard',
      });
      if (res.status !== 200) throw new Error(`HEAD: HTTP ${res.status}`);
    });
    await waitQuiet(QUIET_WAIT_S * 1000);
    const get = await loop('GET manifest', 32, async () => {
      const res = await request(base, {
        path: '/v2/bench/auth/manifests/v1',
        headers: { ...headers, Accept: OCI_MANIFEST },
        agent: a,
        sink: 'discard',
      });
      if (res.status !== 200) throw new Error(`GET manifest: HTTP ${res.status}`);
    });
    return { head, get };
  } finally {
    a.destroy();
  }
}

async function withStrata(tmp, name, env, fn) {
  const dir = join(tmp, name);
  mkdirSync(dir, { recursive: true });
  const db = await createBenchDatabase();
  let server;
  try {
    server = await startStrata({ root: ROOT, dir, db, log, name, env });
    await waitQuiet(QUIET_WAIT_S * 1000);
    return await fn(server);
  } finally {
    if (server) await stopProcess(server.child);
    await db.drop();
  }
}

const tokenEnv = { STRATA_AUTH: 'token', STRATA_ADMIN_PASSWORD: PASSWORD };

async function main() {
  ensureTools(log);
  const tmp = mkdtempSync(join(tmpdir(), 'strata-bench-auth-'));
  const out = {};
  try {
    // The reference with htpasswd: bcrypt at cost 5 (the lowest it takes), so its login cost is its best case.
    const htpasswd = join(tmp, 'htpasswd');
    const hash = await bcrypt({
      password: PASSWORD,
      salt: randomBytes(16),
      costFactor: 5,
      outputType: 'encoded',
    });
    writeFileSync(htpasswd, `${USER}:${hash}\n`);
    const refDir = join(tmp, 'reference');
    mkdirSync(refDir, { recursive: true });
    const ref = await startReference({ dir: refDir, log, htpasswd });
    try {
      await waitQuiet(QUIET_WAIT_S * 1000);
      const a = agent();
      const layer = await seed(ref.base, { Authorization: refBasic }, a);
      a.destroy();
      log('reference (htpasswd): reads …');
      out.reference = await reads(ref.base, { Authorization: refBasic }, layer);
    } finally {
      await stopProcess(ref.child);
    }
    out.off = await withStrata(tmp, 'strata-auth-off', {}, async (s) => {
      const a = agent();
      const layer = await seed(s.base, {}, a);
      a.destroy();
      log('strata, auth off: reads …');
      return reads(s.base, {}, layer);
    });
    out.token = await withStrata(tmp, 'strata-auth-token', tokenEnv, async (s) => {
      // The account `admin` (STRATA_ADMIN_PASSWORD) under the bench's name: log in as admin.
      const t = await tokenAs(s.base, 'repository:bench/auth:pull,push');
      const headers = { Authorization: `Bearer ${t}` };
      const a = agent();
      const layer = await seed(s.base, headers, a);
      a.destroy();
      log('strata, auth token: reads …');
      const r = await reads(s.base, headers, layer);
      await waitQuiet(QUIET_WAIT_S * 1000);
      log('strata, auth token: token issue rate …');
      const b = agent();
      const issue = await loop('token issue', 8, async () => {
        const res = await request(s.base, {
          path: '/auth/token?service=strata&scope=repository%3Abench%2Fauth%3Apull',
          headers: { Authorization: adminBasic },
          agent: b,
        });
        if (res.status !== 200) throw new Error(`token: HTTP ${res.status}`);
      });
      b.destroy();
      return { ...r, issue };
    });
    out.storm = await withStrata(
      tmp,
      'strata-login-storm',
      { ...tokenEnv, STRATA_LOGIN_CACHE: 'false' },
      async (s) => {
        const t = await tokenAs(s.base, 'repository:bench/auth:pull,push');
        const headers = { Authorization: `Bearer ${t}` };
        const a = agent();
        const layer = await seed(s.base, headers, a);
        const head = async () => {
          const res = await request(s.base, {
            method: 'HEAD',
            path: `/v2/bench/auth/blobs/${layer}`,
            headers,
            agent: a,
            sink: 'discard',
          });
          if (res.status !== 200) throw new Error(`HEAD: HTTP ${res.status}`);
        };
        log('login storm: HEAD alone …');
        const alone = await loop('HEAD alone', 32, head);
        await waitQuiet(QUIET_WAIT_S * 1000);
        log('login storm: HEAD with 8 clients logging in …');
        const b = agent();
        let logins = 0;
        let refused = 0;
        let stop = false;
        const loginLoop = async () => {
          while (!stop) {
            const res = await request(s.base, {
              path: '/auth/token?service=strata&scope=repository%3Abench%2Fauth%3Apull',
              headers: { Authorization: adminBasic },
              agent: b,
            });
            if (res.status === 200) logins++;
            else if (res.status === 429) refused++;
            else throw new Error(`login: HTTP ${res.status}`);
          }
        };
        const t0 = performance.now();
        const storm = Promise.all(Array.from({ length: 8 }, loginLoop));
        const during = await loop('HEAD during logins', 32, head);
        stop = true;
        await storm;
        const seconds = (performance.now() - t0) / 1000;
        a.destroy();
        b.destroy();
        return { alone, during, loginsPerSec: logins / seconds, refused };
      },
    );
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  report(out);
}

const adminBasic = `Basic ${Buffer.from(`admin:${PASSWORD}`).toString('base64')}`;
async function tokenAs(base, scope) {
  const res = await request(base, {
    path: `/auth/token?service=strata&scope=${encodeURIComponent(scope)}`,
    headers: { Authorization: adminBasic },
  });
  expectStatus(res, 200, 'GET /auth/token');
  return JSON.parse(res.body.toString()).token;
}

function report(o) {
  const f = (x) => Math.round(x).toLocaleString('en-US');
  const r = (a, b) => `${(a / b).toFixed(2)}×`;
  const rows = [
    ['HEAD blob, 32 clients (req/s)', o.reference.head.rps, o.off.head.rps, o.token.head.rps],
    ['GET manifest by tag, 32 clients (req/s)', o.reference.get.rps, o.off.get.rps, o.token.get.rps],
  ];
  const lines = [
    '# Strata benchmark: authentication',
    '',
    `${new Date().toISOString()} · each server alone · ${DURATION_MS / 1000} s per figure · reference: htpasswd (bcrypt cost 5), Basic credentials on every request · Strata token: a bearer token (ES256 JWT) on every request`,
    '',
    '| metric | reference (htpasswd) | Strata, auth off | Strata, token | token / off (≥ 0.85×) | token / reference (≥ 4×) |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      ([label, ref, off, tok]) =>
        `| ${label} | ${f(ref)} | ${f(off)} | ${f(tok)} | ${r(tok, off)} ${tok / off >= 0.85 ? 'pass' : 'FAIL'} | ${r(tok, ref)} ${tok / ref >= 4 ? 'pass' : 'FAIL'} |`,
    ),
    `| HEAD blob p99 (ms) | ${o.reference.head.p99.toFixed(2)} | ${o.off.head.p99.toFixed(2)} | ${o.token.head.p99.toFixed(2)} | | |`,
    '',
    `Token issue rate (GET /auth/token, correct password, 8 clients, verified-login cache on): ${f(o.token.issue.rps)} tokens/s, p99 ${o.token.issue.p99.toFixed(1)} ms.`,
    '',
    `Login storm (STRATA_LOGIN_CACHE=false: argon2id at every login): HEAD alone ${f(o.storm.alone.rps)} req/s; with 8 clients logging in meanwhile ${f(o.storm.during.rps)} req/s (${r(o.storm.during.rps, o.storm.alone.rps)}), p99 ${o.storm.during.p99.toFixed(2)} ms; ${o.storm.loginsPerSec.toFixed(1)} logins/s, ${o.storm.refused} answered 429.`,
    '',
  ];
  const text = lines.join('\n');
  process.stdout.write(`${text}\n`);
  writeFileSync(join(ROOT, 'bench', 'results-auth.md'), text);
}

await main();
