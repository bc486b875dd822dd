#!/usr/bin/env node
import 'reflect-metadata';
import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import { createPool, migrate } from '@strata/db';
import { FilesystemDriver } from '@strata/storage';
import { ConfigError, loadConfig, type Config } from './config/config';
import { createApp } from './http/create-app';
import { startMetricsServer } from './metrics/metrics.endpoint';
import { IDENTITY_USAGE, runIdentityCommand } from './cli/identity.command';
import { IMMUTABLE_USAGE, runImmutableCommand } from './cli/immutable.command';
import { runSql } from './cli/sql.command';
import { createLogger } from './http/logger';
import { reloadOnHangup, warnIfExposed } from './http/tls';
import { installTuning } from './tuning';
import { startDatabase, startRuntime, stopRuntime } from './runtime';

const USAGE = `usage: strata [serve | migrate | verify-config | sql [psql arguments] | users | groups | grants | tokens |
              immutable-tags]

  serve          run the registry (default)
  migrate        apply pending migrations and exit
  verify-config  validate the configuration (environment and STRATA_CONFIG file) and exit
  sql            psql on the registry's database, embedded or DATABASE_URL (sql -c "select ..." for one query)

accounts and permissions (STRATA_AUTH=token), on the same database:
${IDENTITY_USAGE}
tags that, once pushed, are never moved or deleted (nor their manifests):
${IMMUTABLE_USAGE}`;

function configOrExit(): Config {
  try {
    return loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`strata: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
}

async function serve(config: Config): Promise<void> {
  const logger = createLogger(config.logLevel);
  // Node's own warnings (deprecations and the like) in the same JSON lines as everything else.
  process.removeAllListeners('warning');
  process.on('warning', (w: Error & { code?: string }) =>
    logger.warn({ warning: w.name, code: w.code }, w.message),
  );
  // Signals are handled here from the first moment: one that arrives while starting stops the registry once
  // it has started, rather than killing the process and leaving the embedded PostgreSQL running.
  let requested: string | undefined;
  let onSignal = (signal: string): void => void (requested ??= signal);
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  // SIGHUP reloads the TLS certificate when there is one (below); otherwise, and until the server is up, it must
  // not do Node's default, which ends the process (a closed terminal sends it) without stopping anything.
  if (!config.tls)
    process.on('SIGHUP', () => logger.info({ signal: 'SIGHUP' }, 'nothing to reload: no TLS configured'));
  else process.on('SIGHUP', () => undefined);
  const runtime = await startRuntime(config, logger);
  let app: NestFastifyApplication;
  try {
    app = await createApp(runtime);
  } catch (e) {
    await stopRuntime(runtime).catch(() => undefined);
    throw e;
  }
  const metricsServer =
    runtime.metrics && config.metricsPort !== null
      ? await startMetricsServer(
          runtime.metrics,
          runtime.identity,
          config.host,
          config.metricsPort,
          logger,
        ).catch(async (e: unknown) => {
          await app.close().catch(() => undefined);
          await stopRuntime(runtime).catch(() => undefined);
          throw new Error(
            `cannot serve metrics on ${config.host}:${config.metricsPort}: ${(e as Error).message}`,
          );
        })
      : null;
  // Before listening, so a SIGHUP sent once the port answers reloads rather than kills.
  if (config.tls) reloadOnHangup(app.getHttpAdapter().getInstance().server, config.tls, logger);
  try {
    await listen(app, config.port, config.host);
  } catch (e) {
    await app.close().catch(() => undefined);
    await stopRuntime(runtime).catch(() => undefined);
    throw e;
  }
  warnIfExposed(logger, {
    host: config.host,
    port: config.port,
    tls: config.tls !== null,
    auth: config.auth !== null,
  });
  if (!config.auth)
    logger.info(
      'authentication is off: every client may pull, push and delete (STRATA_AUTH=token turns it on)',
    );
  logger.info(
    {
      host: config.host,
      port: config.port,
      storage: config.storage,
      ...(runtime.storage instanceof FilesystemDriver ? { directWrites: runtime.storage.directWrites } : {}),
      database: runtime.embedded ? 'embedded' : 'external',
      auth: config.auth ? 'token' : 'off',
      maxConnections: config.maxConnections,
      metrics: runtime.metrics ? (config.metricsPort ?? 'on the registry port') : 'off',
    },
    'strata listening',
  );

  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    const server = app.getHttpAdapter().getInstance().server;
    // Past the deadline, in-flight requests are cut so the process still stops.
    const deadline = setTimeout(() => {
      logger.warn(
        { timeoutMs: config.shutdownTimeoutMs },
        'failed to drain requests in time, closing connections',
      );
      server.closeAllConnections();
    }, config.shutdownTimeoutMs);
    deadline.unref();
    // Node keeps a keep-alive connection open after its last response even while the server closes, until the
    // client or keepAliveTimeout ends it: those that fall idle during the drain are closed as they do.
    const idle = setInterval(() => server.closeIdleConnections(), 100);
    idle.unref();
    metricsServer?.close();
    app
      .close()
      .finally(() => clearInterval(idle))
      .then(() => stopRuntime(runtime))
      .then(() => {
        clearTimeout(deadline);
        logger.info('stopped');
        process.exit(0);
      })
      .catch((err: unknown) => {
        logger.error({ err }, 'failed to shut down cleanly');
        process.exit(1);
      });
  };
  onSignal = shutdown;
  if (requested) shutdown(requested);
}

/**
 * Listens through Fastify itself, not Nest's listen(), which logs a failure as an error line of its own before
 * rejecting: one cause, one line (the start failure's). The usual causes are told as such.
 */
async function listen(app: NestFastifyApplication, port: number, host: string): Promise<void> {
  await app.init();
  try {
    await app.getHttpAdapter().getInstance().listen({ port, host });
  } catch (e) {
    const where = `${host}:${port}`;
    switch ((e as NodeJS.ErrnoException).code) {
      case 'EADDRINUSE':
        throw new Error(`${where} is already in use by another program: stop it, or set PORT (or HOST)`);
      case 'EACCES':
        throw new Error(`not allowed to listen on ${where} (ports below 1024 need privileges): set PORT`);
      case 'EADDRNOTAVAIL':
        throw new Error(`cannot listen on ${where}: ${host} is not an address of this machine (set HOST)`);
      default:
        throw e;
    }
  }
}

async function runMigrate(config: Config): Promise<void> {
  const logger = createLogger(config.logLevel);
  const { connectionString, embedded } = await startDatabase(config, logger);
  const pool = createPool({ connectionString, max: 2 });
  try {
    const { applied, alreadyApplied } = await migrate(pool);
    logger.info({ applied, alreadyApplied: alreadyApplied.length }, 'migrations done');
  } finally {
    // The pool itself: a Kysely instance that ran no query of its own would not end it.
    await pool.end();
    await embedded?.stop();
  }
}

async function main(argv: string[]): Promise<void> {
  const command = argv[0] ?? 'serve';
  switch (command) {
    case 'serve':
      installTuning();
      return serve(configOrExit());
    case 'migrate':
      return runMigrate(configOrExit());
    case 'sql':
      return process.exit(await runSql(configOrExit(), argv.slice(1)));
    case 'users':
    case 'groups':
    case 'grants':
    case 'tokens':
      return process.exit(await runIdentityCommand(configOrExit(), command, argv.slice(1)));
    case 'immutable-tags':
      return process.exit(await runImmutableCommand(configOrExit(), argv.slice(1)));
    case 'verify-config': {
      const config = configOrExit();
      process.stdout.write(
        `configuration is valid\n${JSON.stringify({ ...config, databaseUrl: config.databaseUrl ? '(set)' : null }, null, 2)}\n`,
      );
      return;
    }
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return;
    default:
      process.stderr.write(`strata: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      process.exit(2);
  }
}

/** The cause in one line: pg's connect errors may be an AggregateError with no message of its own. */
function describe(err: unknown): string {
  if (err instanceof AggregateError && !err.message) return err.errors.map(describe).join('; ');
  if (err instanceof Error)
    return (err.message || (err as { code?: string }).code || err.name).replace(/\s*\n\s*/g, ' | ');
  if (err === undefined || err === null) return `unknown error (${String(err)})`;
  return typeof err === 'object' ? JSON.stringify(err) : String(err as string | number);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`strata: failed to start: ${describe(err)}\n`);
  // The stack is for debugging Strata itself, not for the operator's first line.
  if (/^(debug|trace)$/.test(process.env.STRATA_LOG_LEVEL ?? '') && err instanceof Error && err.stack) {
    process.stderr.write(`${err.stack}\n`);
  }
  process.exit(1);
});
