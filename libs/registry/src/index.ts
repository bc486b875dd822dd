export * from './blob.service';
export * from './browse.service';
export * from './catalog.service';
export * from './manifests/manifest.service';
export * from './registry';
export type { AuditFilter, VisibleFilter } from './stores/browse.store';
export * from './stores/repository.store';
export { type CommittedBlob, rangeError, uploadRange } from './uploads/blob-commits';
export * from './uploads/upload.service';
