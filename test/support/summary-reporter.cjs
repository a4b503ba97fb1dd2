'use strict';
// Mocha reporter: the spec reporter's output, then one line of our own that CI reads:
//   tests: N passed, N failed, N skipped
// always all three counts, so a CI check can match the whole line.
const Mocha = require('mocha');

// Plain text in CI logs and when NO_COLOR is set (supports-color turns colors on for CI=true).
if (process.env.CI || process.env.NO_COLOR) Mocha.reporters.Base.useColors = false;

class SummaryReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    runner.once('end', () => {
      const s = this.stats;
      process.stdout.write(`tests: ${s.passes} passed, ${s.failures} failed, ${s.pending} skipped\n`);
    });
  }
}

module.exports = SummaryReporter;
