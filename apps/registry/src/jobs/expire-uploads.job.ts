import { Inject, Injectable } from '@nestjs/common';
import { Interval } from '@nestjs/schedule';
import type pg from 'pg';
import type { Logger } from 'pino';
import { systemMeta } from '@strata/events';
import { UploadService } from '@strata/registry';
import type { BlobStorage } from '@strata/storage';
import type { Config } from '../config/config';
import { CONFIG, LOGGER, METRICS, POOL, STORAGE } from '../tokens';
import type { Metrics } from '../metrics/metrics';
import { jobStep } from './job-errors';
import { withJobLock } from './job-lock';

/**
 * Removes uploads idle for longer than STRATA_UPLOAD_TTL, recording each as `upload.expired`, and what writers
 * that died left in storage (the partial file of an upload cut by a crash).
 */
@Injectable()
export class ExpireUploadsJob {
  private running = false;

  constructor(
    private readonly uploads: UploadService,
    @Inject(POOL) private readonly pool: pg.Pool,
    @Inject(CONFIG) private readonly config: Config,
    @Inject(LOGGER) private readonly logger: Logger,
    @Inject(STORAGE) private readonly storage: BlobStorage,
    @Inject(METRICS) private readonly metrics: Metrics | null,
  ) {}

  @Interval('expire-uploads', 60_000)
  async tick(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      await jobStep(this.logger, 'expire-uploads', 'expire idle uploads', this.metrics, async () => {
        const removed = await withJobLock(this.pool, 'expire-uploads', () => this.run());
        if (removed) this.logger.info({ job: 'expire-uploads', removed }, 'expired idle uploads');
      });
      // Every replica looks at its own view of the storage: another host's dead writers are its to see. Run even
      // when the database is away: the filesystem driver's leftovers need none of it.
      await jobStep(this.logger, 'expire-uploads', 'remove leftovers', this.metrics, async () => {
        const leftovers = (await this.storage.removeLeftovers?.()) ?? 0;
        if (leftovers)
          this.logger.info({ job: 'expire-uploads', leftovers }, 'removed partial writes of dead processes');
      });
    } finally {
      this.running = false;
    }
  }

  async run(): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await this.uploads.expireIdle(this.config.uploadTtlSeconds, systemMeta('expire-uploads'));
      total += n;
      if (n === 0) return total;
    }
  }
}
