// Imported first by main: libuv sizes its thread pool on first use. File writes, fsyncs and renames of
// concurrent uploads all queue there; the default of 4 makes 32 clients wait on each other's fsyncs.
process.env.UV_THREADPOOL_SIZE ??= '16';
