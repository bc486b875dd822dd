import { type DynamicModule, Global, Module, type OnApplicationShutdown } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import {
  BlobService,
  BrowseService,
  CatalogService,
  createRegistry,
  ManifestService,
  type Registry,
  RepositoryStore,
  UploadService,
} from '@strata/registry';
import { PreparedStatements } from '@strata/db';
import type { Runtime } from './runtime';
import { CONFIG, DB, IDENTITY, LOGGER, METRICS, POOL, REGISTRY, RUNTIME, STORAGE } from './tokens';

/** Hands the runtime (pool, storage, logger) to Nest and builds the framework-free domain services on it. */
@Global()
@Module({})
export class RegistryModule implements OnApplicationShutdown {
  constructor(private readonly moduleRef: ModuleRef) {}

  /** After the HTTP server has drained: requests in flight still hash on the upload service's worker. */
  async onApplicationShutdown(): Promise<void> {
    await this.moduleRef.get<Registry>(REGISTRY).close();
  }

  static register(runtime: Runtime): DynamicModule {
    const registry = createRegistry({
      statements: new PreparedStatements(runtime.pool),
      storage: runtime.storage,
      logger: runtime.logger,
      uploads: { inlineMax: runtime.config.inlineBlobMax, deferChunkSync: runtime.config.deferChunkSync },
    });
    return {
      module: RegistryModule,
      providers: [
        { provide: RUNTIME, useValue: runtime },
        { provide: CONFIG, useValue: runtime.config },
        { provide: DB, useValue: runtime.db },
        { provide: POOL, useValue: runtime.pool },
        { provide: STORAGE, useValue: runtime.storage },
        { provide: LOGGER, useValue: runtime.logger },
        { provide: REGISTRY, useValue: registry },
        { provide: IDENTITY, useValue: runtime.identity },
        { provide: METRICS, useValue: runtime.metrics },
        { provide: RepositoryStore, useValue: registry.repositories },
        { provide: UploadService, useValue: registry.uploads },
        { provide: BlobService, useValue: registry.blobs },
        { provide: ManifestService, useValue: registry.manifests },
        { provide: CatalogService, useValue: registry.catalog },
        { provide: BrowseService, useValue: registry.browse },
      ],
      exports: [
        RUNTIME,
        CONFIG,
        DB,
        POOL,
        STORAGE,
        LOGGER,
        REGISTRY,
        IDENTITY,
        METRICS,
        RepositoryStore,
        UploadService,
        BlobService,
        ManifestService,
        CatalogService,
        BrowseService,
      ],
    };
  }
}
