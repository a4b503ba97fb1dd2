/** Stages of the data path, in flow order, as the session report names them. */
export const STAGES = ['source read', 'processing', 'network', 'target write'] as const;
export type Stage = (typeof STAGES)[number];

/**
 * Busy time of one stage: the union of the intervals in which at least one operation of the stage
 * was under way (several reads in flight count once).
 */
export class BusyMeter {
  private active = 0;
  private since = 0;
  private total = 0;
  used = false;

  start(): void {
    this.used = true;
    if (this.active++ === 0) this.since = performance.now();
  }

  end(): void {
    if (--this.active === 0) this.total += performance.now() - this.since;
  }

  async time<T>(op: () => Promise<T>): Promise<T> {
    this.start();
    try {
      return await op();
    } finally {
      this.end();
    }
  }

  timeSync<T>(op: () => T): T {
    this.start();
    try {
      return op();
    } finally {
      this.end();
    }
  }

  get busyMs(): number {
    return this.measured ?? this.total + this.added + (this.active > 0 ? performance.now() - this.since : 0);
  }

  private added = 0;

  /** Adds busy time measured where the work ran (a block read on a block thread, `SourceMover`). */
  addMeasured(ms: number): void {
    this.used = true;
    this.added += ms;
  }

  private measured?: number;

  /**
   * Replaces the in-flight time with a busy time measured where the work ran: for `processing`, the
   * worker threads' own time on blocks divided by their number (their mean utilisation), so a block
   * waiting in a queue no longer counts as processing.
   */
  setMeasured(ms: number): void {
    this.used = true;
    this.measured = ms;
  }
}

export type StageMeters = Record<Stage, BusyMeter>;

export function newStageMeters(): StageMeters {
  return Object.fromEntries(STAGES.map((s) => [s, new BusyMeter()])) as StageMeters;
}

export interface StageReport {
  stage: Stage;
  busyMs: number;
  /** Busy time as a share of the wall time, 0..1 (stages overlap, so shares may sum above 1). */
  busyShare: number;
}

/** Per-stage figures and the busiest stage, for stages that ran. */
export function stageReport(meters: StageMeters, wallMs: number): { stages: StageReport[]; bottleneck: Stage | null } {
  const stages = STAGES.filter((s) => meters[s].used).map((stage) => {
    const busyMs = Math.round(meters[stage].busyMs);
    return { stage, busyMs, busyShare: wallMs > 0 ? Math.min(1, Math.round((busyMs / wallMs) * 1000) / 1000) : 0 };
  });
  const top = [...stages].sort((a, b) => b.busyMs - a.busyMs)[0];
  return { stages, bottleneck: top ? top.stage : null };
}
