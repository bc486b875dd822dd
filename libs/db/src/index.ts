export * from './database';
export * from './embedded-postgres';
export * from './migrator';
export * from './schema';
export * from './prepared';
export * from './batcher';
export * from './lookup';
export * from './sqlstate';
