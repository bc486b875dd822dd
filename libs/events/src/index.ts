export * from './event-types';
export * from './event.store';
export * from './meta';
