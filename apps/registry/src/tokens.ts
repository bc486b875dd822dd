export const RUNTIME = Symbol('RUNTIME');
export const CONFIG = Symbol('CONFIG');
export const DB = Symbol('DB');
export const POOL = Symbol('POOL');
export const STORAGE = Symbol('STORAGE');
export const LOGGER = Symbol('LOGGER');
export const REGISTRY = Symbol('REGISTRY');
export const IDENTITY = Symbol('IDENTITY');
