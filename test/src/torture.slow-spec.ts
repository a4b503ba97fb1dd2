import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { ROOT } from './support/helpers.js';

const TORTURE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'torture.js');
const ROUNDS = 5;
const MAX_SECONDS = 60; // no round starts after this; the one running finishes and is checked

/**
 * `npm run torture`, short: a few rounds of backup, prune, gc, key change and forget killed with
 * SIGKILL at random moments, as a child process, exactly as a user runs it. `npm run torture --
 * --rounds 200` is the long run.
 */
describe('kill -9 torture, short run (slow)', function () {
  it(`${ROUNDS} rounds within ${MAX_SECONDS} s: verify passes after every kill and no restore point is lost`, async function () {
    this.timeout((MAX_SECONDS + 90) * 1000);
    const seed = process.env.FERRY_TORTURE_SEED ?? '2026';
    const { code, stdout } = await new Promise<{ code: number | null; stdout: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [TORTURE, '--rounds', String(ROUNDS), '--seed', seed, '--max-seconds', String(MAX_SECONDS)], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.on('error', reject);
      child.on('close', (c) => resolve({ code: c, stdout: out }));
    });
    if (process.env.FERRY_TEST_VERBOSE) console.log(stdout);
    const lines = stdout.trim().split('\n');
    expect(lines.at(-1), stdout).to.match(/^torture: \d+ kills, \d+ points checked, 0 lost$/);
    expect(code, stdout).to.equal(0);
    const [, kills, checked] = /^torture: (\d+) kills, (\d+) points checked/.exec(lines.at(-1)!)!.map(Number);
    expect(kills, 'at least one round was killed').to.be.at.least(1);
    expect(checked).to.be.at.least(kills);
  });
});
