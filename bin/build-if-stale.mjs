#!/usr/bin/env node
// The build (`npm run build`, which passes --always) and `npm start`'s build step, which compiles only when what
// the build reads changed since the last build, so a restart takes a second rather than a full TypeScript
// compile. What it reads is hashed (contents, not mtimes, so a checkout that touches files without changing them
// does not rebuild); every build records the hash of the sources it compiled beside its output in dist/.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = join(import.meta.dirname, '..');
const stamp = join(root, 'dist', '.build-sources.sha256');
const output = join(root, 'dist', 'apps', 'registry', 'src', 'main.js');

function* files(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* files(path);
    else if (/\.(ts|json)$/.test(entry.name) && !entry.name.endsWith('.spec.ts')) yield path;
  }
}

function sourcesHash() {
  const inputs = [
    ...files(join(root, 'apps')),
    ...files(join(root, 'libs')),
    join(root, 'tsconfig.json'),
    join(root, 'package-lock.json'),
  ].sort();
  const hash = createHash('sha256');
  for (const file of inputs)
    hash.update(relative(root, file)).update('\0').update(readFileSync(file)).update('\0');
  return hash.digest('hex');
}

/** Compiles directly (never through npm, whose `build` script is this file). */
function build(hash) {
  rmSync(stamp, { force: true });
  const project = join(root, 'apps', 'registry', 'tsconfig.app.json');
  for (const tool of ['tsc', 'tsc-alias']) {
    execFileSync(join(root, 'node_modules', '.bin', tool), ['-p', project], { cwd: root, stdio: 'inherit' });
  }
  writeFileSync(stamp, `${hash}\n`);
}

const current = sourcesHash();
if (process.argv.includes('--always')) build(current);
else {
  const built = existsSync(stamp) && existsSync(output) ? readFileSync(stamp, 'utf8').trim() : null;
  if (built === current) process.stderr.write('strata: dist/ is built from these sources, not rebuilding\n');
  else {
    process.stderr.write(`strata: ${built === null ? 'no build yet' : 'sources changed'}, building\n`);
    build(current);
  }
}
