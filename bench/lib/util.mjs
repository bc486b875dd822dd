// Small helpers shared by the bench: HTTP requests with streamed bodies, ports, statistics, /proc sampling.
import { createHash, randomFillSync } from 'node:crypto';
import { createWriteStream, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';

export const MiB = 1024 * 1024;

/** A free TCP port on the loopback interface. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * One HTTP request. `body` may be a Buffer, a string or a readable stream (then `headers` must carry Content-Length).
 * `sink`: 'buffer' (default) collects the response body, 'discard' drops it, or a function(chunk) that sees every chunk.
 * Resolves { status, headers, body?, bytes }.
 */
export function request(
  base,
  { method = 'GET', path, headers = {}, body, agent, sink = 'buffer', timeoutMs = 600_000 },
) {
  const url = new URL(path, base);
  return new Promise((resolve, reject) => {
    const h = { ...headers };
    if (
      body !== undefined &&
      !(body && typeof body.pipe === 'function') &&
      h['Content-Length'] === undefined
    ) {
      h['Content-Length'] = Buffer.byteLength(body);
    }
    const req = http.request(
      { method, hostname: url.hostname, port: url.port, path: url.pathname + url.search, headers: h, agent },
      (res) => {
        const chunks = [];
        let bytes = 0;
        res.on('data', (c) => {
          bytes += c.length;
          if (sink === 'buffer') chunks.push(c);
          else if (typeof sink === 'function') sink(c);
        });
        res.on('end', () =>
          resolve({
            status: res.statusCode,
            headers: res.headers,
            body: sink === 'buffer' ? Buffer.concat(chunks) : undefined,
            bytes,
          }),
        );
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () =>
      req.destroy(new Error(`${method} ${url.pathname}: timed out after ${timeoutMs} ms`)),
    );
    req.on('error', reject);
    if (body === undefined) req.end();
    else if (typeof body.pipe === 'function') {
      body.on('error', (e) => req.destroy(e));
      body.pipe(req);
    } else req.end(body);
  });
}

/** Throws a short, readable error unless the response has one of the expected statuses. */
export function expectStatus(res, expected, what) {
  const ok = Array.isArray(expected) ? expected.includes(res.status) : res.status === expected;
  if (ok) return res;
  let detail = '';
  if (res.body && res.body.length) {
    const text = res.body.toString('utf8', 0, Math.min(res.body.length, 400));
    try {
      const j = JSON.parse(text);
      detail = j.errors?.map((e) => e.code + (e.message ? `: ${e.message}` : '')).join('; ') ?? text;
    } catch {
      detail = text.replace(/\s+/g, ' ').trim();
    }
  }
  throw new Error(`${what}: HTTP ${res.status}${detail ? ` (${detail.slice(0, 160)})` : ''}`);
}

/** Appends a query parameter to a (possibly absolute) Location. */
export function withQuery(location, key, value) {
  return `${location}${location.includes('?') ? '&' : '?'}${key}=${encodeURIComponent(value)}`;
}

/** Writes `size` random bytes to `file` in 8 MiB pieces; returns the sha256 digest. */
export async function writeRandomFile(file, size) {
  const hash = createHash('sha256');
  const out = createWriteStream(file);
  const piece = Buffer.allocUnsafe(8 * MiB);
  for (let done = 0; done < size; ) {
    const n = Math.min(piece.length, size - done);
    const buf = randomFillSync(piece, 0, n).subarray(0, n);
    hash.update(buf);
    if (!out.write(Buffer.from(buf))) await new Promise((r) => out.once('drain', r));
    done += n;
  }
  await new Promise((resolve, reject) => out.end((err) => (err ? reject(err) : resolve())));
  return `sha256:${hash.digest('hex')}`;
}

export const sha256 = (buf) => `sha256:${createHash('sha256').update(buf).digest('hex')}`;

export function percentile(values, p) {
  if (values.length === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx];
}

export const median = (values) => percentile(values, 50);

/**
 * Runs `fn(workerIndex)` in `concurrency` loops until `deadline` (ms since epoch) or until `next()` returns
 * undefined. Returns { count, errors, firstError, latencies } where latencies are in ms.
 */
export async function runClosedLoop({ concurrency, durationMs, items, op }) {
  const latencies = [];
  let errors = 0;
  let firstError;
  let count = 0;
  const deadline = durationMs ? performance.now() + durationMs : Infinity;
  let cursor = 0;
  const start = performance.now();
  const worker = async () => {
    for (;;) {
      if (performance.now() >= deadline) return;
      let item;
      if (items) {
        if (cursor >= items.length) return;
        item = items[cursor++];
      }
      const t0 = performance.now();
      try {
        await op(item);
        latencies.push(performance.now() - t0);
        count++;
      } catch (e) {
        errors++;
        firstError ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsedMs = performance.now() - start;
  return { count, errors, firstError, latencies, elapsedMs };
}

// ---- /proc sampling: where the time goes --------------------------------------------------------------

const TICK = 100; // CLK_TCK on Linux

/** utime+stime of one process in seconds (0 when it is gone). */
export function procCpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / TICK; // fields 14 and 15
  } catch {
    return 0;
  }
}

/** CPU seconds of reaped children of this process (skopeo runs). */
function childrenCpuSeconds() {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[13]) + Number(f[14])) / TICK; // fields 16 and 17
}

/**
 * pid → utime+stime of the PostgreSQL processes that work for the bench: the backends connected to `db.name`
 * plus the server's own background processes (WAL writer, checkpointer, …), which serve every database.
 * Backends of other databases (other people's tests on a shared machine) are left out.
 */
function postgresCpu(db) {
  const total = new Map();
  if (!db?.postmasterPid) return total;
  const dbName = db.name;
  const procs = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')) !== 'postgres') continue;
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      procs.push({
        pid: d,
        ppid: f[1],
        cpu: (Number(f[11]) + Number(f[12])) / TICK,
        cmdline: readFileSync(`/proc/${d}/cmdline`, 'utf8'),
      });
    } catch {
      // raced with an exiting process
    }
  }
  const ours = (p) => p.cmdline.includes(` ${dbName} `);
  const clientBackend = (p) => /\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]|::1\(\d+\)/.test(p.cmdline);
  for (const p of procs) {
    if (p.ppid === String(db.postmasterPid) && (ours(p) || !clientBackend(p))) total.set(p.pid, p.cpu);
  }
  return total;
}

function systemCpu() {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0); // guest time is already in user
  return { total: total / TICK, idle: v[3] / TICK, iowait: v[4] / TICK, steal: (v[7] ?? 0) / TICK };
}

function procIo(pid) {
  try {
    const out = {};
    for (const line of readFileSync(`/proc/${pid}/io`, 'utf8').split('\n')) {
      const [k, v] = line.split(':');
      if (k) out[k.trim()] = Number(v);
    }
    return { read: out.read_bytes ?? 0, write: out.write_bytes ?? 0 };
  } catch {
    return { read: 0, write: 0 };
  }
}

/** Snapshot for `profile()`: server CPU, PostgreSQL CPU, this client's CPU, children CPU, system idle/iowait. */
/** Resets a process's VmHWM to its current RSS (Linux clear_refs), so the next reading is this period's peak. */
export function resetPeakRss(pid) {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export function snapshot(pid, db) {
  const self = process.cpuUsage();
  return {
    t: performance.now(),
    server: procCpuSeconds(pid),
    pg: postgresCpu(db),
    client: (self.user + self.system) / 1e6,
    children: childrenCpuSeconds(),
    sys: systemCpu(),
    io: procIo(pid),
  };
}

/** Turns two snapshots into percentages of one core over the wall time between them. */
export function profile(a, b) {
  const wall = (b.t - a.t) / 1000;
  const pct = (x) => (wall > 0 ? (100 * x) / wall : 0);
  const sysTotal = b.sys.total - a.sys.total;
  // Backends that exited in between are lost; ones that started in between count whole.
  let pg = 0;
  for (const [pid, cpu] of b.pg) pg += cpu - (a.pg.get(pid) ?? 0);
  // CPU the machine spent busy (in core-seconds) that none of the measured processes account for.
  const busy =
    sysTotal - (b.sys.idle - a.sys.idle) - (b.sys.iowait - a.sys.iowait) - (b.sys.steal - a.sys.steal);
  const ours = b.server - a.server + pg + (b.client - a.client) + (b.children - a.children);
  return {
    wall,
    server: pct(b.server - a.server),
    pg: pct(pg),
    other: pct(Math.max(0, busy - ours)),
    client: pct(b.client - a.client),
    children: pct(b.children - a.children),
    // system-wide, in percent of all cores
    idle: sysTotal > 0 ? (100 * (b.sys.idle - a.sys.idle)) / sysTotal : 0,
    iowait: sysTotal > 0 ? (100 * (b.sys.iowait - a.sys.iowait)) / sysTotal : 0,
    steal: sysTotal > 0 ? (100 * (b.sys.steal - a.sys.steal)) / sysTotal : 0,
    diskReadMB: (b.io.read - a.io.read) / 1e6,
    diskWriteMB: (b.io.write - a.io.write) / 1e6,
    peakRssMiB: b.peakRssMiB ?? NaN,
  };
}

/** Peak resident set size of a process in MiB (VmHWM). */
export function peakRssMiB(pid) {
  try {
    const m = /VmHWM:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/**
 * Waits (up to `maxMs`) until the machine is quiet: less than `threshold` % of all cores busy over a 500 ms
 * window. Other people's test runs on a shared machine skew every number. Returns the last busy %.
 */
export async function waitQuiet(maxMs, threshold = 15) {
  const deadline = Date.now() + maxMs;
  let busyPct = 0;
  for (;;) {
    const a = systemCpu();
    await sleep(500);
    const b = systemCpu();
    const total = b.total - a.total;
    busyPct =
      total > 0
        ? (100 * (total - (b.idle - a.idle) - (b.iowait - a.iowait) - (b.steal - a.steal))) / total
        : 0;
    if (busyPct < threshold || Date.now() >= deadline) return busyPct;
  }
}
