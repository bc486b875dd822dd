import { spawnSync } from 'node:child_process';

/**
 * Makes `command` runnable, installing Debian's `pkg` with apt-get when it is missing and this process may (root).
 * Returns null when the command runs, or why it cannot: the caller skips its test and says so.
 */
export function ensureDebianPackage(
  command: string,
  pkg: string = command,
  versionArgs = ['--version'],
): string | null {
  if (spawnSync(command, versionArgs).status === 0) return null;
  if (process.getuid?.() !== 0)
    return `${command} is not installed and this user cannot install it (not root)`;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['update', '-qq'], { env, stdio: 'ignore' });
  const r = spawnSync(
    'apt-get',
    ['install', '-y', '-qq', '-o', 'DPkg::Lock::Timeout=300', '--no-install-recommends', pkg],
    {
      env,
      encoding: 'utf8',
    },
  );
  if (r.status !== 0 || spawnSync(command, versionArgs).status !== 0) {
    return `${command} could not be installed from Debian's package ${pkg}: ${(r.stderr || '').trim().split('\n').pop()}`;
  }
  return null;
}

/** Says on the test output why a suite is skipped, so a skip is never silent. */
export function reportSkip(what: string, why: string | null): void {
  if (why) process.stdout.write(`\nSKIPPING ${what}: ${why}\n`);
}
