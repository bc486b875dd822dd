export * from './blob-storage';
export * from './filesystem.driver';
export * from './large-object.driver';
export * from './paths';
export { collectWhenQuiet } from './reclaim';
