/**
 * Each top-level verb's command line and one-line description, apart from its module so that
 * `ferry --help` lists every verb and `ferry VERB` loads only that verb's module (cli/src/main.ts).
 * The command modules spread their entry here, so the listing and the command never disagree.
 */
export const VERBS = {
  backup: { command: 'backup <job>', describe: 'run a backup job: one restore point per VM' },
  list: { command: 'list <job>', describe: "list the restore points in the job's repository" },
  restore: { command: 'restore <job>', describe: 'write a disk of a restore point to a file or block device, verifying every block' },
  files: { command: 'files <job>', describe: 'list the partitions and files of a disk of a restore point (ext2/3/4, NTFS), or extract files and folders, without mounting' },
  plugins: { command: 'plugins', describe: 'list the plugins found (without running them) and why any were refused' },
  validate: { command: 'validate <job>', describe: 'check a job file and the plugins it names, without running it' },
  verify: { command: 'verify [job]', describe: 'health check: read every block the restore points need (or a sample) and name any damage' },
  prune: { command: 'prune <job>', describe: "apply the job's retention policy: list (and delete) the restore points it does not keep, and why" },
  forget: { command: 'forget [job]', describe: 'remove one restore point on purpose (also a damaged one); immutability still applies; `ferry gc` reclaims its space' },
  copy: { command: 'copy <job>', describe: "copy restore points from the job's repository to another (a repository YAML file or folder); only blocks the target lacks are sent" },
  gc: { command: 'gc [job]', describe: 'garbage collection: remove packs no restore point needs, rewrite mostly unused ones (safe while backups run)' },
  unlock: { command: 'unlock [job]', describe: 'show the locks on the repository and remove the stale ones (holder gone, no heartbeat)' },
  certs: { command: 'certs', describe: 'make the CA, keys and certificates the data-pipe services authenticate with' },
  proxy: { command: 'proxy <action>', describe: 'run the source-side data mover (backup proxy): `ferry proxy serve --listen HOST:PORT --certs DIR`' },
  repository: {
    command: 'repository <action>',
    describe:
      'run the target-side data mover (repository service): `ferry repository serve --listen HOST:PORT --certs DIR --repository PATH|YAML`; ' +
      'move a repository to format 2: `ferry repository upgrade --repository PATH|JOB.yaml`',
  },
  'guest-proxy': { command: 'guest-proxy <action>', describe: 'run the guest interaction proxy: `ferry guest-proxy serve --listen HOST:PORT --certs DIR`' },
  key: { command: 'key <action> [job]', describe: 'change the passphrase of an encrypted repository (rewraps its keys; data is not rewritten)' },
  serve: { command: 'serve <job>', describe: 'serve a disk of a restore point as an NBD export (read from the repository on demand, every block verified)' },
  'instant-recover': { command: 'instant-recover <job>', describe: 'run a VM straight from a restore point: serve its disks over NBD and attach them to QEMU (--qmp) or print a QEMU command line (--print)' },
  mount: { command: 'mount <job>', describe: 'attach a disk of a restore point read-only as /dev/nbdN (needs the kernel nbd module and nbd-client)' },
} as const satisfies Record<string, { command: string; describe: string }>;

export type Verb = keyof typeof VERBS;
