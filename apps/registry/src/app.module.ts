import { type DynamicModule, Module } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import { ApiController } from './api/api.controller';
import { TokenController } from './auth/token.controller';
import { MetricsController } from './metrics/metrics.controller';
import { HealthController } from './health/health.controller';
import { JobsModule } from './jobs/jobs.module';
import { RegistryModule } from './registry.module';
import type { Runtime } from './runtime';
import { BaseController } from './v2/base.controller';
import { BlobsController } from './v2/blobs.controller';
import { CatalogController } from './v2/catalog.controller';
import { ManifestsController } from './v2/manifests.controller';
import { ReferrersController } from './v2/referrers.controller';
import { TagsController } from './v2/tags.controller';
import { UploadsController } from './v2/uploads.controller';

@Module({})
export class AppModule {
  static register(runtime: Runtime): DynamicModule {
    return {
      module: AppModule,
      imports: [
        RegistryModule.register(runtime),
        ...(runtime.config.jobsEnabled ? [ScheduleModule.forRoot(), JobsModule] : []),
      ],
      controllers: [
        HealthController,
        BaseController,
        CatalogController,
        UploadsController,
        BlobsController,
        ManifestsController,
        TagsController,
        ReferrersController,
        TokenController,
        MetricsController,
        ApiController,
      ],
    };
  }
}
