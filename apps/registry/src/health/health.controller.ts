import { Controller, Get, Inject, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import type pg from 'pg';
import { pendingMigrations } from '@strata/db';
import type { BlobStorage } from '@strata/storage';
import { POOL, STORAGE } from '../tokens';

type Check = { ok: true } | { ok: false; error: string };

async function check(fn: () => Promise<unknown>): Promise<Check> {
  try {
    await fn();
    return { ok: true };
  } catch (e) {
    return { ok: false, error: (e as Error).message };
  }
}

@Controller()
export class HealthController {
  constructor(
    @Inject(POOL) private readonly pool: pg.Pool,
    @Inject(STORAGE) private readonly storage: BlobStorage,
  ) {}

  /** The process is alive and serving. */
  @Get('healthz')
  healthz(): { status: 'ok' } {
    return { status: 'ok' };
  }

  /** The process can serve: database reachable, schema current, storage writable. */
  @Get('readyz')
  async readyz(@Res() reply: FastifyReply): Promise<void> {
    const database = await check(() => this.pool.query('SELECT 1'));
    const migrations = database.ok
      ? await check(async () => {
          const pending = await pendingMigrations(this.pool);
          if (pending.length) throw new Error(`pending: ${pending.join(', ')}`);
        })
      : ({ ok: false, error: 'database unreachable' } as const);
    const storage = await check(() => this.storage.check());
    const ready = database.ok && migrations.ok && storage.ok;
    await reply
      .code(ready ? 200 : 503)
      .send({ status: ready ? 'ready' : 'unavailable', checks: { database, migrations, storage } });
  }
}
