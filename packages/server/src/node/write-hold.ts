/**
 * BARRIER's hold: while it is on, this leader proposes no new change to content (write releases, creates,
 * deletes, log appends and truncations); they wait, they do not fail. A snapshot coordinator holds every
 * group, exports each, then releases them: a consistent cut across groups (docs/consistency.md). The hold
 * lives here, in the node, with time from the injected Env: the consensus core and state machine know
 * nothing of it. It ends by itself after the time the coordinator gave, so a dead coordinator cannot
 * freeze a group.
 */
import type { Env, EnvTimer } from '@segmem/protocol';
import type { Command, Outcome } from '../core/commands.js';

/** The commands that change what a consolidated snapshot holds, and so wait while a hold is on. */
export function changesContent(cmd: Command): boolean {
  switch (cmd.op) {
    case 'create':
    case 'delete':
    case 'append':
    case 'truncate':
      return true;
    case 'release':
      return cmd.mode === 'write';
    default:
      return false;
  }
}

export interface HoldState {
  held: boolean;
  /** Milliseconds until the hold ends by itself (0 when none is on). */
  remainingMs: number;
}

export class WriteHold {
  private untilMs = 0;
  private timer: EnvTimer | null = null;
  private waiting: (() => void)[] = [];
  /** Content changes proposed and not yet applied: a hold answers only once they are. */
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(private readonly env: Env) {}

  get held(): boolean {
    return this.untilMs > 0;
  }

  state(): HoldState {
    return {
      held: this.held,
      remainingMs: this.held ? Math.max(0, Math.ceil(this.untilMs - this.env.now())) : 0,
    };
  }

  /** Proposes `cmd` through `propose`, after the hold ends when `cmd` changes content. */
  async propose(cmd: Command, propose: (cmd: Command) => Promise<Outcome>): Promise<Outcome> {
    if (!changesContent(cmd)) return propose(cmd);
    // A hold begun again while this one waited keeps it waiting.
    while (this.held) await new Promise<void>((resolve) => this.waiting.push(resolve));
    const outcome = propose(cmd);
    this.inFlight.add(outcome);
    const forget = () => this.inFlight.delete(outcome);
    outcome.then(forget, forget);
    return outcome;
  }

  /**
   * Starts (or extends) a hold for `ms`, then resolves once every content change proposed before it has
   * been applied or failed. The caller then waits for the log to apply what is committed (a read barrier).
   */
  async hold(ms: number): Promise<void> {
    this.untilMs = this.env.now() + ms;
    if (this.timer) this.env.clearTimeout(this.timer);
    this.timer = this.env.setTimeout(() => this.release(), ms);
    this.timer.unref();
    await Promise.allSettled([...this.inFlight]);
  }

  /** Ends the hold; answers whether one was still on (false: it had ended by itself, or never began). */
  release(): boolean {
    const was = this.held;
    this.untilMs = 0;
    if (this.timer) this.env.clearTimeout(this.timer);
    this.timer = null;
    const waiting = this.waiting;
    this.waiting = [];
    for (const go of waiting) go();
    return was;
  }
}
