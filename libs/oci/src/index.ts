export * from './errors';
export * from './grammar';
