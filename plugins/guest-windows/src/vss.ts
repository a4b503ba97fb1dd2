/**
 * Reading what Windows' VSS tools print. Formats as Microsoft documents them: `vssadmin list
 * writers` ("vssadmin list writers", Windows Commands reference; states are the VSS_WRITER_STATE
 * enumeration, vss.h, printed as `[N] Text`) and DiskShadow's `create` ("create", "diskshadow",
 * Windows Commands reference).
 */

export interface WriterStatus {
  name: string;
  id: string;
  /** VSS_WRITER_STATE: 1 stable, 5 waiting for BackupComplete, 6-15 failed at some event. */
  state: number;
  stateText: string;
  lastError: string;
}

/** Every writer `vssadmin list writers` printed, in order. */
export function parseWriters(text: string): WriterStatus[] {
  const out: WriterStatus[] = [];
  let cur: Partial<WriterStatus> | undefined;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    let m: RegExpExecArray | null;
    if ((m = /^Writer name: '(.*)'$/.exec(line))) {
      cur = { name: m[1] };
      out.push(cur as WriterStatus);
    } else if (!cur) continue;
    else if ((m = /^Writer Id: (\{[0-9a-fA-F-]+\})$/.exec(line))) cur.id = m[1].toLowerCase();
    else if ((m = /^State: \[(\d+)\] (.*)$/.exec(line))) {
      cur.state = Number(m[1]);
      cur.stateText = m[2];
    } else if ((m = /^Last error: (.*)$/.exec(line))) cur.lastError = m[1];
  }
  return out.filter((w) => w.state !== undefined && w.lastError !== undefined);
}

/** A writer that failed or is in no known state (VSS_WS_UNKNOWN, VSS_WS_FAILED_AT_*), or reports an error. */
export function writerFailed(w: WriterStatus): boolean {
  return w.state === 0 || w.state >= 6 || w.lastError !== 'No error';
}

/** One line per writer for messages: `SqlServerWriter: [9] Failed, Timed out`. */
export function describeWriter(w: WriterStatus): string {
  return `${w.name}: [${w.state}] ${w.stateText}, ${w.lastError}`;
}

export interface ShadowSet {
  setId: string;
  /** Original volumes of the shadow copies created, as DiskShadow names them (`C:\`). */
  volumes: string[];
}

/**
 * The shadow copy set DiskShadow's `create` reported (`Querying all shadow copies with the shadow
 * copy set ID {...}` and one `Original volume name: \\?\Volume{...}\ [C:\]` per copy), or
 * undefined when it reported none.
 */
export function parseShadowSet(text: string): ShadowSet | undefined {
  const set = /shadow copy set ID (\{[0-9a-fA-F-]+\})/.exec(text);
  if (!set) return undefined;
  const volumes = [...text.matchAll(/Original volume name: \S+ \[([^\]]+)\]/g)].map((m) => m[1]);
  return { setId: set[1].toLowerCase(), volumes };
}

/** DiskShadow's own error lines (`COM call "..." failed`, `ERROR:`, a writer excluded), for messages. */
export function diskShadowErrors(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => /^(ERROR|COM call .* failed|.*writer .* (failed|excluded)|The last operation failed)/i.test(l));
}
