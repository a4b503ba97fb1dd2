'use strict';
// Mocha reporter: the spec reporter's output, then one line of our own that CI reads:
//   tests: N passed, N failed, N skipped
// always all three counts, so a CI check can match the whole line. Before it, the ten spec files
// that took longest (hooks included), so the 15-minute budget of the test command can be watched.
const Mocha = require('mocha');

// Plain text in CI logs and when NO_COLOR is set (supports-color turns colors on for CI=true).
if (process.env.CI || process.env.NO_COLOR) Mocha.reporters.Base.useColors = false;

class SummaryReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    const files = new Map();
    let current;
    runner.on('suite', (suite) => {
      if (suite.file && suite.file !== current) {
        current = suite.file;
        files.set(current, (files.get(current) ?? 0) - Date.now());
      }
    });
    runner.on('suite end', (suite) => {
      if (suite.parent && suite.parent.root && suite.file) files.set(suite.file, files.get(suite.file) + Date.now());
      if (suite.parent && suite.parent.root) current = undefined;
    });
    runner.once('end', () => {
      const slowest = [...files].filter(([, ms]) => ms > 0).sort((a, b) => b[1] - a[1]).slice(0, 10);
      if (slowest.length > 0) {
        process.stdout.write('slowest spec files:\n');
        const root = process.cwd() + '/';
        for (const [file, ms] of slowest) process.stdout.write(`  ${(ms / 1000).toFixed(1).padStart(6)} s  ${file.replace(root, '')}\n`);
      }
      const s = this.stats;
      process.stdout.write(`tests: ${s.passes} passed, ${s.failures} failed, ${s.pending} skipped\n`);
    });
  }
}

module.exports = SummaryReporter;
