import type { QmpClient } from './qmp-client.js';

/** The port name QEMU's guest agent listens on (`-device virtserialport,name=...`). */
export const QGA_PORT_NAME = 'org.qemu.guest_agent.0';

/**
 * The unix socket of the VM's guest agent channel, found from QEMU itself: the `virtserialport`
 * device named `org.qemu.guest_agent.0` (with or without an id), its `chardev`, and that chardev's
 * socket path from `query-chardev`. Undefined when the VM has no such port, or its chardev is not a
 * unix socket QEMU listens on (a libvirt domain's agent socket is held by libvirt itself).
 */
export async function findGuestAgentSocket(qmp: QmpClient): Promise<string | undefined> {
  for (const base of ['/machine/peripheral', '/machine/peripheral-anon']) {
    const children = await qmp.execute<{ name: string; type: string }[]>('qom-list', { path: base }).catch(() => []);
    for (const c of children) {
      if (c.type !== 'child<virtserialport>') continue;
      const path = `${base}/${c.name}`;
      const name = await qmp.execute<string>('qom-get', { path, property: 'name' }).catch(() => undefined);
      if (name !== QGA_PORT_NAME) continue;
      const label = await qmp.execute<string>('qom-get', { path, property: 'chardev' }).catch(() => undefined);
      if (!label) continue;
      const chardevs = await qmp.execute<{ label: string; filename: string }[]>('query-chardev');
      const filename = chardevs.find((d) => d.label === label)?.filename ?? '';
      // "unix:/run/vm/qga.sock,server=on", "disconnected:" in front while no client is connected
      const m = /^(?:disconnected:)?unix:([^,]+)(,.*)?$/.exec(filename);
      if (m && /,server/.test(m[2] ?? '')) return m[1];
    }
  }
  return undefined;
}
