#!/usr/bin/env node
// The build (`npm run build`, which passes --always) and `npm start`'s build step, which compiles only when what
// the build reads changed since the last build, so a restart takes a second rather than a full TypeScript
// compile. What it reads is hashed (contents, not mtimes, so a checkout that touches files without changing them
// does not rebuild); every build records the hash of the sources it compiled beside its output.
//
// A build never writes into the build in use: it compiles into a directory of its own under .dist/, then points
// the `dist` symlink at it with one rename, so a registry starting meanwhile (npm start, bin/strata) loads either
// the old build or the new one, whole. A build that fails leaves `dist` as it was.
//
//   dist -> .dist/<id>            the build in use (a symlink; a real directory from before is moved aside once)
//   .dist/<id>/                   one build: apps/, libs/, ui/ (the web UI, served at /ui/), .build-sources.sha256
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { basename, join, relative } from 'node:path';

const root = join(import.meta.dirname, '..');
const dist = join(root, 'dist');
const builds = join(root, '.dist');
const STAMP = '.build-sources.sha256';
const MAIN = join('apps', 'registry', 'src', 'main.js');
const UI = join(root, 'apps', 'ui');
/**
 * Builds kept besides the one in use: the one it replaced (a registry may be starting from it this moment) and
 * any younger than this (another build still compiling, or about to switch to its own).
 */
const KEEP_MS = 60 * 60 * 1000;

function* files(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* files(path);
    else if (/\.(ts|tsx|json|css|html)$/.test(entry.name) && !entry.name.endsWith('.spec.ts')) yield path;
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

/** The build `dist` points at, if it is a symlink into .dist/. */
function current() {
  try {
    return basename(readlinkSync(dist));
  } catch {
    return null;
  }
}

/** The web UI as the registry serves it: one minified script beside its page and stylesheet. */
async function buildUi(out) {
  // Imported here, not above: starting from a build that is current needs no devDependency.
  const { build: bundle } = await import('esbuild');
  mkdirSync(out, { recursive: true });
  await bundle({
    entryPoints: [join(UI, 'src', 'main.tsx')],
    outfile: join(out, 'app.js'),
    tsconfig: join(UI, 'tsconfig.json'),
    bundle: true,
    minify: true,
    target: 'es2020',
    sourcemap: 'linked',
    logLevel: 'warning',
  });
  for (const file of ['index.html', 'style.css']) copyFileSync(join(UI, file), join(out, file));
}

/** Compiles directly (never through npm, whose `build` script is this file) into a new build, then switches. */
async function build(hash) {
  mkdirSync(builds, { recursive: true });
  const id = `${new Date().toISOString().replace(/[:.]/g, '-')}-${process.pid}`;
  const out = join(builds, id);
  const project = join(root, 'apps', 'registry', 'tsconfig.app.json');
  try {
    execFileSync(join(root, 'node_modules', '.bin', 'tsc'), ['-p', project, '--outDir', out], {
      cwd: root,
      stdio: 'inherit',
    });
    // An absolute --outDir: tsc-alias reads a relative one from the working directory, not the project's.
    execFileSync(join(root, 'node_modules', '.bin', 'tsc-alias'), ['-p', project, '--outDir', out], {
      cwd: root,
      stdio: 'inherit',
    });
    await buildUi(join(out, 'ui'));
    writeFileSync(join(out, STAMP), `${hash}\n`);
  } catch (e) {
    rmSync(out, { recursive: true, force: true });
    throw e;
  }
  const replaced = current();
  const link = join(root, `.dist-${id}`);
  symlinkSync(relative(root, out), link);
  // A real directory (a build from before builds were switched) cannot be renamed over: moved aside first.
  if (existsSync(dist) && !lstatSync(dist).isSymbolicLink()) renameSync(dist, join(builds, `old-${id}`));
  renameSync(link, dist);
  prune(id, replaced);
}

function prune(...keep) {
  const now = Date.now();
  for (const name of readdirSync(builds)) {
    if (keep.includes(name)) continue;
    const path = join(builds, name);
    if (now - statSync(path).mtimeMs < KEEP_MS) continue;
    rmSync(path, { recursive: true, force: true });
  }
}

const hash = sourcesHash();
if (process.argv.includes('--always')) await build(hash);
else {
  const stamp = join(dist, STAMP);
  const built = existsSync(stamp) && existsSync(join(dist, MAIN)) ? readFileSync(stamp, 'utf8').trim() : null;
  if (built === hash) process.stderr.write('strata: dist/ is built from these sources, not rebuilding\n');
  else {
    process.stderr.write(`strata: ${built === null ? 'no build yet' : 'sources changed'}, building\n`);
    await build(hash);
  }
}
