import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { freePort } from '../../libs/db/src/embedded-postgres';

/** The launcher users run, so its V8 settings are what the process tests measure. */
export const MAIN = join(__dirname, '../../bin/strata');

export interface ServerProcess {
  readonly url: string;
  readonly port: number;
  readonly child: ChildProcess;
  readonly lines: Record<string, unknown>[];
  /** The same lines as written, for what parsing would hide (a key written twice). */
  readonly text: string[];
  readonly stderr: string[];
  /** Resolves with the exit code (or signal name) once the process has exited. */
  readonly exited: Promise<number | string>;
  rssKiB(field?: 'VmRSS' | 'VmHWM'): Promise<number>;
}

export interface StartOptions {
  /**
   * The server leads a process group of its own, as a shell's foreground job does, so a test can signal the
   * whole group (`process.kill(-pid, 'SIGINT')`) as a terminal's Ctrl-C would.
   */
  readonly detached?: boolean;
}

/**
 * Runs the built registry (`npm run build` first) as its own process, as an operator would. Its environment is
 * only `env` and what it needs to run: without DATABASE_URL there, it runs on its embedded PostgreSQL.
 */
export async function startServer(
  env: Record<string, string>,
  port?: number,
  options: StartOptions = {},
): Promise<ServerProcess> {
  const p = port ?? (await freePort());
  const child = spawn(MAIN, ['serve'], {
    env: { PATH: process.env.PATH ?? '', HOST: '127.0.0.1', PORT: String(p), STRATA_JOBS: 'false', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: options.detached ?? false,
  });
  const lines: Record<string, unknown>[] = [];
  const text: string[] = [];
  const stderr: string[] = [];
  let buf = '';
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line.trim()) continue;
      text.push(line);
      lines.push(JSON.parse(line) as Record<string, unknown>);
    }
  });
  child.stderr.on('data', (d: Buffer) => stderr.push(d.toString('utf8')));
  const exited = new Promise<number | string>((res) =>
    child.once('exit', (code, signal) => res(code ?? signal ?? -1)),
  );
  const url = `http://127.0.0.1:${p}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    const early = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 100))]);
    if (early !== null) throw new Error(`server exited (${String(early)}): ${stderr.join('')}`);
    const ok = await fetch(`${url}/v2/`).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`server did not start: ${stderr.join('')}`);
  }
  return {
    url,
    port: p,
    child,
    lines,
    text,
    stderr,
    exited,
    rssKiB: async (field = 'VmRSS') => {
      const { readFile } = await import('node:fs/promises');
      const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
      const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(status);
      return m ? Number(m[1]) : NaN;
    },
  };
}
