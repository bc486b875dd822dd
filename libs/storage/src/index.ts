export * from './blob-storage';
export * from './filesystem.driver';
export * from './large-object.driver';
export * from './paths';
export { directBuffersLent } from './direct-io';
export { startReclaim } from './memory';
