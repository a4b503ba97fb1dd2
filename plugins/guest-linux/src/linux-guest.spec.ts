import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { skipBecause, skipForMissingTools, skipUnlessTools } from '@ferry/core/testing';
import type { GuestOptions } from '@ferry/core/plugin';
import { LinuxGuestRuntime } from './linux-guest-runtime.js';
import { localBootId } from './own-machine.js';
import type { GuestChannel } from '@ferry/guest-common';
import type { LinuxGuestSession } from './linux-guest-session.js';
import { makeLoopMount, SSHD, startSshdGuest, type LoopMount, type SshdGuest } from '@ferry/guest-common/testing';

/**
 * The Linux runtime against a real sshd on loopback acting as the guest (this machine, as root).
 * Only a loop-mounted ext4 the suite makes is ever frozen (`mounts:` names it).
 */
describe('guest-linux over SSH (sshd on loopback as the guest)', function () {
  this.timeout(60_000);
  let dir: string;
  let sshd: SshdGuest;
  let fs: LoopMount;

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (sshd logs in as root; loop mounts)');
    if (!existsSync(SSHD)) skipForMissingTools(this, { sshd: 'openssh-server' });
    skipUnlessTools(this, { 'ssh-keygen': 'openssh-client', fsfreeze: 'util-linux', 'mkfs.ext4': 'e2fsprogs' });
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-guest-linux-'));
    sshd = await startSshdGuest(path.join(dir, 'sshd'));
    fs = makeLoopMount(dir);
  });

  after(async function () {
    fs?.remove();
    await sshd?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function options(over: Partial<GuestOptions> = {}): GuestOptions {
    return {
      os: 'linux',
      via: 'ssh',
      host: sshd.host,
      port: sshd.port,
      user: sshd.user,
      credentials: { privateKey: readFileSync(sshd.userKey), knownHosts: readFileSync(sshd.knownHosts, 'utf8') },
      freeze: 'fsfreeze',
      mounts: [fs.mountPoint],
      scripts: {},
      applications: [],
      timeoutSeconds: 20,
      ...over,
    };
  }

  function script(name: string, body: string): string {
    const p = path.join(dir, name);
    writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return p;
  }

  function ferryFolders(): string[] {
    // exactly the runtime's session folders (GUEST_FOLDER_PREFIX + 12 hex digits), not test temp folders
    return readdirSync('/tmp').filter((n) => /^ferry-guest-[0-9a-f]{12}$/.test(n));
  }

  it('deploys, runs the scripts in order with output captured, freezes and thaws, and removes the runtime', async function () {
    const log = path.join(dir, 'order.log');
    const before = ferryFolders();
    const s = (await new LinuxGuestRuntime().connect(
      'vm1',
      options({
        scripts: {
          preFreeze: script('pre.sh', `echo pre >> ${log}; echo "pre says hello"`),
          postThaw: script('post.sh', `echo post >> ${log}`),
          postBackup: script('post-backup.sh', `echo post-backup >> ${log}; echo oops >&2`),
        },
      }),
    )) as LinuxGuestSession;
    assert.equal(ferryFolders().length, before.length + 1, 'the runtime folder exists while the session runs');
    // this "guest" is the machine the test runs on: the session knows it (and so refuses to freeze
    // anything but the named loop mount; that refusal is tested as a function, never by trying)
    assert.equal((s as unknown as { bootId?: string }).bootId, localBootId());
    const pre = await s.preFreeze();
    assert.equal(pre.scripts?.[0].exitCode, 0);
    assert.match(pre.scripts![0].output, /pre says hello/);
    const frozen = await s.freeze();
    assert.equal(frozen.frozen, 1);
    assert.equal(await fs.writable(), false, 'the loop mount is frozen');
    await s.thaw();
    assert.equal(await fs.writable(3000), true, 'the loop mount is thawed');
    await s.postThaw();
    const after = await s.afterBackup();
    assert.match(after.scripts![0].output, /oops/);
    await s.close();
    assert.deepEqual(readFileSync(log, 'utf8').trim().split('\n'), ['pre', 'post', 'post-backup']);
    assert.deepEqual(ferryFolders(), before, 'the runtime folder is removed');
  });

  it('fails a script with a non-zero exit as GUEST_STEP_FAILED naming the exit code and output', async function () {
    const s = await new LinuxGuestRuntime().connect('vm1', options({ scripts: { preFreeze: script('bad.sh', 'echo "no database here" >&2; exit 3') } }));
    try {
      await assert.rejects(s.preFreeze!(), (err: Error & { code?: string }) => err.code === 'GUEST_STEP_FAILED' && /exited with 3/.test(err.message) && /no database here/.test(err.message));
    } finally {
      await s.close();
    }
  });

  it('cuts a hanging script (and its children) at the limit', async function () {
    const marker = path.join(dir, 'hang-finished');
    const s = await new LinuxGuestRuntime().connect('vm1', options({ timeoutSeconds: 3, scripts: { preFreeze: script('hang.sh', `sleep 30; touch ${marker}`) } }));
    const t0 = Date.now();
    try {
      await assert.rejects(s.preFreeze!(), (err: Error & { code?: string }) => err.code === 'GUEST_TIMEOUT');
      assert.ok(Date.now() - t0 < 10_000, `stopped after ${Date.now() - t0} ms`);
    } finally {
      await s.close();
    }
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(existsSync(marker), false);
  });

  it('thaws by itself (the watchdog) when the backup server is gone without thawing', async function () {
    const s = (await new LinuxGuestRuntime().connect('vm1', options({ timeoutSeconds: 3 }))) as LinuxGuestSession;
    await s.freeze();
    assert.equal(await fs.writable(500), false);
    // the connection dies as with a killed backup server: no thaw, no clean-up
    await (s as unknown as { channel: { close(): Promise<void> } }).channel.close();
    // and even the session folder is gone (a clean-up that could not thaw): the watchdog still works
    rmSync((s as unknown as { dir: string }).dir, { recursive: true, force: true });
    const deadline = Date.now() + 8000;
    let thawed = false;
    while (!thawed && Date.now() < deadline) thawed = await fs.writable(1000);
    assert.ok(thawed, 'the guest thawed within timeoutSeconds');
  });

  it('thaw is harmless when nothing is frozen, and a failed freeze leaves nothing frozen', async function () {
    const s = await new LinuxGuestRuntime().connect('vm1', options({ mounts: [fs.mountPoint, path.join(dir, 'not-a-mount-point')] }));
    try {
      await assert.rejects(s.freeze(), (err: Error & { code?: string }) => err.code === 'GUEST_STEP_FAILED');
      assert.equal(await fs.writable(3000), true);
      await s.thaw();
    } finally {
      await s.close();
    }
  });

  it('keeps the last 4 KiB of a command\'s output, or all of it when asked (the runtime\'s own listings)', async function () {
    const s = (await new LinuxGuestRuntime().connect('vm1', options())) as unknown as { channel: GuestChannel; close(): Promise<void> };
    try {
      const short = await s.channel.exec(['seq', '1', '5000']);
      assert.equal(Buffer.byteLength(short.output), 4096);
      assert.ok(short.output.endsWith('4999\n5000\n'));
      const full = await s.channel.exec(['seq', '1', '5000'], { maxOutput: 1 << 20 });
      assert.ok(full.output.startsWith('1\n2\n3\n'));
      assert.equal(full.output.trim().split('\n').length, 5000);
    } finally {
      await s.close();
    }
  });

  it('refuses a host key that differs from knownHosts with GUEST_HOST_KEY, and an unknown host', async function () {
    for (const knownHosts of [readFileSync(sshd.wrongKnownHosts, 'utf8'), `other.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1hZGUgdXAga2V5IGZvciB0aGUgdGVzdCBvbmx5IQ==\n`]) {
      await assert.rejects(
        new LinuxGuestRuntime().connect('vm1', options({ credentials: { privateKey: readFileSync(sshd.userKey), knownHosts } })),
        (err: Error & { code?: string }) => err.code === 'GUEST_HOST_KEY' && /127\.0\.0\.1/.test(err.message),
      );
    }
  });

  it('connects when knownHosts lists only another of the host\'s key types (here ECDSA beside ed25519)', async function () {
    const s = await new LinuxGuestRuntime().connect('vm1', options({ credentials: { privateKey: readFileSync(sshd.userKey), knownHosts: readFileSync(sshd.ecdsaKnownHosts, 'utf8') } }));
    await s.close();
  });

  it('refuses a key the guest does not accept with GUEST_UNREACHABLE', async function () {
    await assert.rejects(
      new LinuxGuestRuntime().connect('vm1', options({ credentials: { privateKey: readFileSync(path.join(dir, 'sshd', 'other_host_key')), knownHosts: readFileSync(sshd.knownHosts, 'utf8') } })),
      (err: Error & { code?: string }) => err.code === 'GUEST_UNREACHABLE',
    );
  });
});
