'use strict';
// Specs sit next to the code (`*.spec.ts`, compiled to dist/); slow suites are `*.slow-spec.ts`.
// `npm test` runs everything; `npm run test:fast` leaves the slow suites out.
const fast = '{core,cli,plugins/*,test}/dist/**/*.spec.js';
const slow = '{core,cli,plugins/*,test}/dist/**/*.slow-spec.js';
// The local index cache of every repository a test makes goes to one temporary folder, not ~/.cache.
if (!process.env.FERRY_CACHE_DIR) {
  const { mkdtempSync, rmSync } = require('node:fs');
  const dir = mkdtempSync(require('node:path').join(require('node:os').tmpdir(), 'ferry-test-cache-'));
  process.env.FERRY_CACHE_DIR = dir;
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
}
module.exports = {
  spec: process.env.FERRY_TEST_FAST ? [fast] : [fast, slow],
  reporter: './test/support/summary-reporter.cjs',
  timeout: 120000,
  'forbid-only': Boolean(process.env.CI),
};
