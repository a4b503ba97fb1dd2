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
  // V8 optimises a function once it has run a budget of bytecode (66 KiB by default) on its own
  // compiler threads. A run's JavaScript is light next to its block work, and most of what reaches
  // the default budget (start-up code, per-block bookkeeping) gains less than its compilation costs:
  // four times the budget leaves the loops that are really hot optimised (index loads, large disks)
  // and saved ~0.1 core-s of compiler threads in a full backup of 2 GiB. An explicit flag wins.
  if (![...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((a) => a.includes('interrupt-budget'))) {
    (await import('node:v8')).setFlagsFromString('--interrupt-budget=270336');
  }
  const { main } = await import('./main.js');
  process.exitCode = await main(argv);
}
