import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sql } from 'kysely';
import ts from 'typescript';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

const SCHEMA_FILE = join(__dirname, '../../libs/db/src/schema.ts');

/**
 * Tables the migrations create that Kysely never queries through `Database`: the migrator's bookkeeping and
 * the large-object driver's index, the identity tables (libs/identity's store) and the immutable-tag rules (the
 * tag store's prepared statements), reached with raw SQL. Any other table must be typed.
 */
const UNTYPED_TABLES = [
  'schema_migrations',
  'storage_objects',
  'accounts',
  'groups',
  'group_members',
  'grants',
  'access_tokens',
  'identity_version',
  'immutable_tag_rules',
];

type Kind = 'number' | 'string' | 'boolean' | 'date' | 'bytes' | 'json';

interface Column {
  readonly kind: Kind;
  readonly nullable: boolean;
}

type Shape = Record<string, Record<string, Column>>;

/** What a PostgreSQL type reads as through pg with the type parsers of `@strata/db`. */
const PG_KINDS: Record<string, Kind> = {
  int2: 'number',
  int4: 'number',
  int8: 'number',
  oid: 'number',
  text: 'string',
  varchar: 'string',
  uuid: 'string',
  xid8: 'string',
  bool: 'boolean',
  timestamptz: 'date',
  bytea: 'bytes',
  jsonb: 'json',
};

interface TsColumn extends Column {
  readonly generated: boolean;
}

/** Reads the `Database` interface of schema.ts with the TypeScript parser: table → column → select type. */
function parseSchema(text: string): Record<string, Record<string, TsColumn>> {
  const source = ts.createSourceFile('schema.ts', text, ts.ScriptTarget.Latest, true);
  const aliases = new Map<string, ts.TypeNode>();
  const interfaces = new Map<string, ts.InterfaceDeclaration>();
  source.forEachChild((node) => {
    if (ts.isTypeAliasDeclaration(node)) aliases.set(node.name.text, node.type);
    if (ts.isInterfaceDeclaration(node)) interfaces.set(node.name.text, node);
  });

  const fail = (node: ts.Node, why: string): never => {
    throw new Error(`schema.ts: ${why}: ${node.getText(source)}`);
  };

  function resolve(node: ts.TypeNode): TsColumn {
    if (ts.isTypeReferenceNode(node)) {
      const name = node.typeName.getText(source);
      const arg = node.typeArguments?.[0];
      if (name === 'Generated' && arg) return { ...resolve(arg), generated: true };
      if (name === 'ColumnType' && arg) return resolve(arg);
      const alias = aliases.get(name);
      if (alias) return resolve(alias);
      if (name === 'Date') return { kind: 'date', nullable: false, generated: false };
      if (name === 'Buffer') return { kind: 'bytes', nullable: false, generated: false };
      if (name === 'Record') return { kind: 'json', nullable: false, generated: false };
      return fail(node, 'unknown type');
    }
    if (ts.isUnionTypeNode(node)) {
      const members = node.types.map((m) =>
        ts.isLiteralTypeNode(m) && m.literal.kind === ts.SyntaxKind.NullKeyword ? null : resolve(m),
      );
      const kinds = new Set(members.flatMap((m) => (m ? [m.kind] : [])));
      const [kind] = kinds;
      if (kinds.size !== 1 || !kind) return fail(node, 'a union of several kinds');
      return { kind, nullable: members.some((m) => m === null || m.nullable), generated: false };
    }
    if (ts.isLiteralTypeNode(node) && ts.isStringLiteral(node.literal))
      return { kind: 'string', nullable: false, generated: false };
    if (node.kind === ts.SyntaxKind.StringKeyword)
      return { kind: 'string', nullable: false, generated: false };
    if (node.kind === ts.SyntaxKind.NumberKeyword)
      return { kind: 'number', nullable: false, generated: false };
    if (node.kind === ts.SyntaxKind.BooleanKeyword)
      return { kind: 'boolean', nullable: false, generated: false };
    return fail(node, 'unsupported type');
  }

  const database = interfaces.get('Database');
  if (!database) throw new Error('schema.ts has no Database interface');
  const tables: Record<string, Record<string, TsColumn>> = {};
  for (const member of database.members) {
    if (!ts.isPropertySignature(member) || !member.type || !ts.isTypeReferenceNode(member.type)) {
      return fail(member, 'a Database member that is not a table interface');
    }
    const table = interfaces.get(member.type.typeName.getText(source));
    if (!table) return fail(member, 'a table interface not declared in schema.ts');
    const columns: Record<string, TsColumn> = {};
    for (const col of table.members) {
      if (!ts.isPropertySignature(col) || !col.type) return fail(col, 'not a column');
      if (col.questionToken) fail(col, 'an optional column (nullable is `T | null`, never optional)');
      columns[col.name.getText(source)] = resolve(col.type);
    }
    tables[member.name.getText(source)] = columns;
  }
  return tables;
}

const shapeOf = (tables: Record<string, Record<string, TsColumn>>): Shape =>
  Object.fromEntries(
    Object.entries(tables).map(([table, cols]) => [
      table,
      Object.fromEntries(
        Object.entries(cols).map(([name, c]) => [name, { kind: c.kind, nullable: c.nullable }]),
      ),
    ]),
  );

interface DbColumn {
  table_name: string;
  column_name: string;
  udt_name: string;
  is_nullable: 'YES' | 'NO';
  has_default: boolean;
}

describe('the Database interface of libs/db/src/schema.ts', () => {
  let t: TestDatabase;
  let typed: Record<string, Record<string, TsColumn>>;
  let columns: DbColumn[];

  beforeAll(async () => {
    typed = parseSchema(await readFile(SCHEMA_FILE, 'utf8'));
    t = await createTestDatabase();
    const r = await sql<DbColumn>`
      SELECT c.table_name, c.column_name, c.udt_name, c.is_nullable,
             (c.column_default IS NOT NULL OR c.is_identity = 'YES') AS has_default
      FROM information_schema.columns c
      JOIN information_schema.tables tb ON tb.table_schema = c.table_schema AND tb.table_name = c.table_name
      WHERE c.table_schema = 'public' AND tb.table_type = 'BASE TABLE'
      ORDER BY c.table_name, c.ordinal_position`.execute(t.db);
    columns = r.rows;
  });
  afterAll(async () => {
    // pool.end() resolves before the server has seen every connection close, so the DROP ... WITH (FORCE) of
    // drop() may terminate one that is still idle: expected here, not an error.
    t.pool.on('error', () => undefined);
    await t.drop();
  });

  it('is read by this test as the tables and columns it declares', () => {
    // Guards the parser itself: a few facts of schema.ts that hold today.
    expect(typed.events?.repository).toEqual({ kind: 'string', nullable: true, generated: false });
    expect(typed.events?.seq).toEqual({ kind: 'number', nullable: false, generated: true });
    expect(typed.tag_lifetimes?.ended_at).toEqual({ kind: 'date', nullable: true, generated: false });
    expect(typed.manifests?.annotations).toEqual({ kind: 'json', nullable: true, generated: false });
    expect(typed.manifest_references?.kind).toEqual({ kind: 'string', nullable: false, generated: false });
    expect(Object.keys(typed).length).toBeGreaterThanOrEqual(10);
  });

  it('types every table of the migrated database, except the few that are only reached with raw SQL', () => {
    const inDatabase = [...new Set(columns.map((c) => c.table_name))].sort();
    const expected = [...Object.keys(typed), ...UNTYPED_TABLES].sort();
    expect(inDatabase).toEqual(expected);
  });

  it('has the columns of the migrated database, each with a compatible type and the same nullability', () => {
    const migrated: Shape = {};
    for (const c of columns) {
      if (UNTYPED_TABLES.includes(c.table_name)) continue;
      const kind = PG_KINDS[c.udt_name];
      if (!kind)
        throw new Error(
          `no TypeScript kind known for ${c.table_name}.${c.column_name} of type ${c.udt_name}`,
        );
      (migrated[c.table_name] ??= {})[c.column_name] = { kind, nullable: c.is_nullable === 'YES' };
    }
    expect(migrated).toEqual(shapeOf(typed));
  });

  it('marks a column Generated only where the database fills it in', () => {
    const generatedWithoutDefault = Object.entries(typed).flatMap(([table, cols]) =>
      Object.entries(cols)
        .filter(
          ([name, c]) =>
            c.generated &&
            !columns.find((d) => d.table_name === table && d.column_name === name)?.has_default,
        )
        .map(([name]) => `${table}.${name}`),
    );
    expect(generatedWithoutDefault).toEqual([]);
  });
});
