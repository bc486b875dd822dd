import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { EmbeddedPostgres } from '@strata/db';
import type { Config } from '../config/config';

/** A failure of `strata sql` told in one line, with the exit status to leave with. */
class SqlCommandError extends Error {
  constructor(
    message: string,
    readonly status = 1,
  ) {
    super(message);
  }
}

function findOnPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // Not here.
    }
  }
  return null;
}

/** The URL psql is given, without its password, which travels in PGPASSWORD so `ps` does not show it. */
function splitPassword(connectionString: string): { url: string; password: string | null } {
  let u: URL;
  try {
    u = new URL(connectionString);
  } catch {
    // A key=value connection string: psql reads it as it is.
    return { url: connectionString, password: null };
  }
  const password = u.password ? decodeURIComponent(u.password) : null;
  u.password = '';
  return { url: u.toString(), password };
}

async function runPsql(psql: string, url: string, password: string | null, args: string[]): Promise<number> {
  const env = { ...process.env };
  if (password !== null) env.PGPASSWORD = password;
  const child = spawn(psql, [`--dbname=${url}`, ...args], { stdio: 'inherit', env });
  // The terminal's Ctrl-C and Ctrl-\ reach psql itself (one process group), which cancels the query; this
  // process waits for it. A SIGTERM or SIGHUP sent to this process alone is passed on.
  const ignore = (): void => undefined;
  const forward = (signal: NodeJS.Signals) => (): void => void child.kill(signal);
  const handlers: [NodeJS.Signals, () => void][] = [
    ['SIGINT', ignore],
    ['SIGQUIT', ignore],
    ['SIGTERM', forward('SIGTERM')],
    ['SIGHUP', forward('SIGHUP')],
  ];
  for (const [signal, handler] of handlers) process.on(signal, handler);
  try {
    return await new Promise<number>((resolve, reject) => {
      child.once('error', (e) => reject(new SqlCommandError(`failed to run ${psql}: ${e.message}`)));
      child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 + signalNumber(signal) : 1)));
    });
  } finally {
    for (const [signal, handler] of handlers) process.removeListener(signal, handler);
  }
}

function signalNumber(signal: NodeJS.Signals): number {
  return (
    ({ SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15 } as Record<string, number>)[signal] ?? 0
  );
}

/**
 * `strata sql [psql arguments]`: psql on the registry's database. On the embedded default it joins the
 * cluster the running registry started, or starts the cluster for the session and stops it after.
 */
export async function runSql(config: Config, args: string[]): Promise<number> {
  try {
    const psql = findOnPath('psql');
    if (!psql) {
      throw new SqlCommandError(
        "psql is not on PATH: install PostgreSQL's client (Debian: apt-get install postgresql-client)",
        127,
      );
    }
    if (config.databaseUrl) {
      const { url, password } = splitPassword(config.databaseUrl);
      return await runPsql(psql, url, password, args);
    }
    const dir = join(config.dataDir, 'postgres');
    const running = await EmbeddedPostgres.findRunning({ dir, database: 'strata' });
    if (running) {
      const { host, port, database, user } = running.address;
      const url = `postgres://${encodeURIComponent(user)}@${host}:${port}/${database}`;
      return await runPsql(psql, url, running.password, args);
    }
    if (!EmbeddedPostgres.exists(dir)) {
      throw new SqlCommandError(
        `no embedded database in ${dir}: start the registry once (strata serve), or set STRATA_DATA_DIR or DATABASE_URL`,
      );
    }
    const session = new EmbeddedPostgres({ dir, database: 'strata' });
    const { url, password } = splitPassword(await session.start());
    try {
      return await runPsql(psql, url, password, args);
    } finally {
      await session.stop();
    }
  } catch (e) {
    process.stderr.write(`strata sql: ${e instanceof Error ? e.message : String(e)}\n`);
    return e instanceof SqlCommandError ? e.status : 1;
  }
}
