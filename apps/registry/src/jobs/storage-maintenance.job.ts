import { Inject, Injectable, type OnModuleDestroy, type OnModuleInit } from '@nestjs/common';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Db } from '@strata/db';
import { EventStore, systemMeta } from '@strata/events';
import type { BlobStorage, MaintenanceReport } from '@strata/storage';
import type { Config } from '../config/config';
import { CONFIG, DB, LOGGER, METRICS, POOL, STORAGE } from '../tokens';
import type { Metrics } from '../metrics/metrics';
import { jobStep } from './job-errors';
import { withJobLock } from './job-lock';

const JOB = 'storage-maintenance';

/**
 * Every STRATA_STORAGE_MAINTENANCE_INTERVAL, on one replica at a time, lets the storage reclaim what nothing refers to
 * (`BlobStorage.maintain`: for large objects, abandoned writes, orphans and dead tuples, since autovacuum may be
 * off), and records what it reclaimed as a `storage.maintained` event. Drivers without maintenance have nothing here.
 */
@Injectable()
export class StorageMaintenanceJob implements OnModuleInit, OnModuleDestroy {
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  /** Tables already reported as refused: the warning is given once per process, not every run. */
  private readonly warned = new Set<string>();

  constructor(
    @Inject(POOL) private readonly pool: pg.Pool,
    @Inject(DB) private readonly db: Db,
    @Inject(CONFIG) private readonly config: Config,
    @Inject(LOGGER) private readonly logger: Logger,
    @Inject(STORAGE) private readonly storage: BlobStorage,
    @Inject(METRICS) private readonly metrics: Metrics | null,
  ) {}

  onModuleInit(): void {
    if (!this.config.storageMaintenance || !this.storage.maintain) return;
    this.timer = setInterval(() => void this.tick(), this.config.storageMaintenanceIntervalMs);
    this.timer.unref();
  }

  onModuleDestroy(): void {
    if (this.timer) clearInterval(this.timer);
  }

  async tick(): Promise<MaintenanceReport | null> {
    if (this.running || !this.storage.maintain) return null;
    this.running = true;
    let report: MaintenanceReport | null = null;
    try {
      await jobStep(this.logger, JOB, 'maintain storage', this.metrics, async () => {
        report = await withJobLock(this.pool, JOB, () => this.storage.maintain!());
        if (report) await this.record(report);
      });
    } finally {
      this.running = false;
    }
    return report;
  }

  private async record(report: MaintenanceReport): Promise<void> {
    const fresh = report.refused.filter((t) => !this.warned.has(t));
    if (fresh.length > 0) {
      for (const t of fresh) this.warned.add(t);
      this.logger.warn(
        { job: JOB, tables: fresh },
        'failed to vacuum storage tables: permission denied (VACUUM needs the table owner, the database owner or a superuser; see the README)',
      );
    }
    if (report.abandonedWrites === 0 && report.orphans === 0 && report.vacuumed.length === 0) return;
    this.logger.info({ job: JOB, ...report }, 'maintained storage');
    await this.db.transaction().execute((tx) =>
      new EventStore().append(tx, {
        type: 'storage.maintained',
        repository: null,
        subject: null,
        payload: {
          abandoned_writes: report.abandonedWrites,
          orphans: report.orphans,
          vacuumed: [...report.vacuumed],
          refused: [...report.refused],
        },
        meta: systemMeta(JOB),
      }),
    );
  }
}
