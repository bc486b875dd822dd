export * from './errors';
export * from './grammar';
export * from './manifest';
