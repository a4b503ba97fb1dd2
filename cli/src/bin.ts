#!/usr/bin/env node
import { enableCompileCache } from './compile-cache.js';

// Before any other module is compiled: later runs reuse V8's code cache (Node >= 22.1; a no-op before).
enableCompileCache();
const argv = process.argv.slice(2);
if (argv.length === 1 && argv[0] === '--version') {
  // The one answer that needs neither yargs nor @ferry/core.
  const { readFileSync } = await import('node:fs');
  process.stdout.write(`${(JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version}\n`);
} else {
  const { main } = await import('./main.js');
  process.exitCode = await main(argv);
}
