/**
 * Part of the source host contract: names of the change-tracking objects a source host creates on the hypervisor for a job's session
 * (a QEMU dirty bitmap, a libvirt checkpoint): `ferry.<job>.<session>`. The job in the name keeps
 * two jobs on one VM apart; the session tells a crashed session's object from the running one's.
 * Job names hold no `/` and session ids (restore point ids) no dot, so the name is a valid bitmap
 * and checkpoint name.
 */
export function trackingName(job: string, sessionId: string): string {
  return `ferry.${job}.${sessionId}`;
}

/**
 * True for a tracking name of `job` (any session). The rest after `ferry.<job>.` must hold no dot,
 * so job `a` never claims job `a.b`'s objects (`ferry.a.b.<session>`).
 */
export function isJobTrackingName(job: string, name: string | undefined): boolean {
  const prefix = `ferry.${job}.`;
  return name !== undefined && name.startsWith(prefix) && name.length > prefix.length && !name.slice(prefix.length).includes('.');
}
