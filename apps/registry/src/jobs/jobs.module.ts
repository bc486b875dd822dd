import { Module } from '@nestjs/common';
import { ExpireUploadsJob } from './expire-uploads.job';
import { StorageMaintenanceJob } from './storage-maintenance.job';

@Module({
  providers: [ExpireUploadsJob, StorageMaintenanceJob],
  exports: [ExpireUploadsJob, StorageMaintenanceJob],
})
export class JobsModule {}
