import { Module } from '@nestjs/common';
import { ExpireUploadsJob } from './expire-uploads.job';

@Module({ providers: [ExpireUploadsJob], exports: [ExpireUploadsJob] })
export class JobsModule {}
