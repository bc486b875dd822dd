import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const LAYERS = [
  ['oci', 'digest', 'db'],
  ['events', 'storage'],
  ['registry', 'identity'],
];

function layers() {
  return LAYERS.flatMap((layer, level) =>
    layer.map((lib) => {
      const allowed = LAYERS.slice(0, level).flat();
      const forbidden = LAYERS.flat().filter((other) => other !== lib && !allowed.includes(other));
      return {
        files: [`libs/${lib}/src/**/*.ts`],
        ignores: ['**/*.spec.ts'],
        rules: {
          'no-restricted-imports': [
            'error',
            {
              patterns: [
                { group: ['**/apps/**', '**/apps'], message: 'libraries never import from apps/' },
                { group: ['@nestjs/*'], message: 'libraries stay free of NestJS; the app wires them' },
                {
                  group: ['../../*/src', '../../*/src/**'],
                  message: 'import other libraries as @strata/<lib>',
                },
                ...(forbidden.length
                  ? [
                      {
                        group: forbidden.map((f) => `@strata/${f}`),
                        message: `libs/${lib} may import only ${allowed.map((a) => `@strata/${a}`).join(', ') || 'no other library'}`,
                      },
                    ]
                  : []),
              ],
            },
          ],
        },
      };
    }),
  );
}

export default tseslint.config(
  {
    ignores: [
      'dist/**',
      '.dist/**',
      'node_modules/**',
      'data/**',
      'coverage/**',
      'bench/**',
      'bin/*.mjs',
      '*.mjs',
      '*.cjs',
      'jest.config.js',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-extraneous-class': 'off',
    },
  },
  // The layering of the README's Layout section: apps use libs, never the other way; a lib imports only libs of a
  // lower layer (oci, digest, db; then events, storage; then registry); no lib depends on NestJS.
  ...layers(),
  {
    files: ['**/*.spec.ts', 'test/**/*.ts'],
    rules: { '@typescript-eslint/no-non-null-assertion': 'off', '@typescript-eslint/unbound-method': 'off' },
  },
);
