#!/usr/bin/env node
import './threadpool';
import 'reflect-metadata';
import { createDb, createPool, migrate } from '@strata/db';
import { collectWhenQuiet, FilesystemDriver } from '@strata/storage';
import { ConfigError, loadConfig, type Config } from './config/config';
import { createApp } from './http/create-app';
import { createLogger } from './http/logger';
import { reloadOnHangup, warnIfExposed } from './http/tls';
import { startDatabase, startRuntime, stopRuntime } from './runtime';

const USAGE = `usage: strata [serve | migrate | verify-config]

  serve          run the registry (default)
  migrate        apply pending migrations and exit
  verify-config  validate the configuration (environment and STRATA_CONFIG file) and exit
`;

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
  const runtime = await startRuntime(config, logger);
  const app = await createApp(runtime);
  // Before listening, so a SIGHUP sent once the port answers reloads rather than kills.
  if (config.tls) reloadOnHangup(app.getHttpAdapter().getInstance().server, config.tls, logger);
  await app.listen(config.port, config.host);
  // Identity (issue 18) will pass whether authentication is on.
  warnIfExposed(logger, { host: config.host, port: config.port, tls: config.tls !== null, auth: false });
  // Memory a burst of requests grew is handed back once it is over, not kept until the next one.
  collectWhenQuiet();
  logger.info(
    {
      host: config.host,
      port: config.port,
      storage: config.storage,
      ...(runtime.storage instanceof FilesystemDriver ? { directWrites: runtime.storage.directWrites } : {}),
      database: runtime.embedded ? 'embedded' : 'external',
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
    app
      .close()
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
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

async function runMigrate(config: Config): Promise<void> {
  const logger = createLogger(config.logLevel);
  const { connectionString, embedded } = await startDatabase(config, logger);
  const pool = createPool({ connectionString, max: 2 });
  try {
    const { applied, alreadyApplied } = await migrate(pool);
    logger.info({ applied, alreadyApplied: alreadyApplied.length }, 'migrations done');
  } finally {
    await createDb(pool).destroy();
    await embedded?.stop();
  }
}

async function main(argv: string[]): Promise<void> {
  const command = argv[0] ?? 'serve';
  switch (command) {
    case 'serve':
      return serve(configOrExit());
    case 'migrate':
      return runMigrate(configOrExit());
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

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(
    `strata: failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(1);
});
