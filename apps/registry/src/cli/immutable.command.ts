import { PreparedStatements } from '@strata/db';
import { isValidPattern, isValidTagPattern } from '@strata/identity';
import { TagStore } from '@strata/registry';
import type { Config } from '../config/config';
import { withDatabase } from './database';
import { cliMeta } from './identity.command';

export const IMMUTABLE_USAGE = `  immutable-tags add <repository-pattern> <tag-pattern>   e.g. immutable-tags add 'prod/**' 'v*'
  immutable-tags list
  immutable-tags remove <id>
`;

class UsageError extends Error {}

async function run(tags: TagStore, verb: string | undefined, args: string[]): Promise<string> {
  switch (verb) {
    case 'add': {
      const [repository, tag] = args;
      if (args.length !== 2 || !repository || !tag)
        throw new UsageError('add takes a repository pattern and a tag pattern');
      if (!isValidPattern(repository))
        throw new UsageError(
          `not a repository pattern: ${repository} (names, * within a segment, ** across)`,
        );
      if (!isValidTagPattern(tag)) throw new UsageError(`not a tag pattern: ${tag} (tag characters and *)`);
      const id = await tags.addRule(repository, tag, cliMeta());
      return `rule ${id}: tags ${tag} of ${repository} are immutable\n`;
    }
    case 'list':
      if (args.length > 0) throw new UsageError('list takes no arguments');
      return (await tags.rules())
        .map(
          (r) =>
            `${r.id}\t${r.repository_pattern}\t${r.tag_pattern}\t${r.created_at.toISOString()}\t${r.created_by ?? '?'}\n`,
        )
        .join('');
    case 'remove': {
      const [id] = args;
      if (args.length !== 1 || !id || !/^[1-9]\d{0,14}$/.test(id))
        throw new UsageError('remove takes a rule id');
      if (!(await tags.removeRule(Number(id), cliMeta()))) throw new Error(`no rule ${id}`);
      return `rule ${id} removed\n`;
    }
    default:
      throw new UsageError(`unknown command: immutable-tags ${verb ?? ''}`);
  }
}

/** `strata immutable-tags add|list|remove`: the rules under which a tag, once pushed, is never moved or deleted. */
export async function runImmutableCommand(config: Config, args: string[]): Promise<number> {
  try {
    const out = await withDatabase(config, (pool) =>
      run(new TagStore(new PreparedStatements(pool)), args[0], args.slice(1)),
    );
    process.stdout.write(out);
    return 0;
  } catch (e) {
    process.stderr.write(`strata immutable-tags: ${e instanceof Error ? e.message : String(e)}\n`);
    if (e instanceof UsageError) process.stderr.write(IMMUTABLE_USAGE);
    return e instanceof UsageError ? 2 : 1;
  }
}
