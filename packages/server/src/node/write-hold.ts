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
    // A slot move's steps copy or drop objects and change the slot table: a cut sees none of them happen.
    case 'moveFreeze':
    case 'moveImport':
    case 'moveSwitch':
    case 'moveAbort':
    case 'slots':
      return true;
    case 'release':
      return cmd.mode === 'write';
    default:
      return false;
  }
}

export interface HoldState {
  /** Whether the asking session's hold is on. */
  held: boolean;
  /** Milliseconds until that hold ends by itself (0 when it is not on). */
  remainingMs: number;
}

/** One session's hold: until when, and the timer that ends it. */
interface Hold {
  untilMs: number;
  timer: EnvTimer;
}

/**
 * Holds are per session: two coordinators (an agent and an on-demand snapshot) may hold at once, and a
 * release answers whether the releasing session's own hold lasted, whatever the other did meanwhile.
 * Content changes wait while any hold is on.
 */
export class WriteHold {
  private readonly holds = new Map<number, Hold>();
  private waiting: (() => void)[] = [];
  /** Content changes proposed and not yet applied: a hold answers only once they are. */
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(private readonly env: Env) {}

  /** Whether any session's hold is on. */
  get held(): boolean {
    return this.holds.size > 0;
  }

  state(sessionId: number): HoldState {
    const h = this.holds.get(sessionId);
    return { held: h !== undefined, remainingMs: h ? Math.max(0, Math.ceil(h.untilMs - this.env.now())) : 0 };
  }

  /** Milliseconds until the last hold ends by itself; 0 when none is on. */
  remainingMs(): number {
    let until = 0;
    for (const h of this.holds.values()) until = Math.max(until, h.untilMs);
    return until === 0 ? 0 : Math.max(1, Math.ceil(until - this.env.now()));
  }

  /**
   * Proposes `cmd` through `propose`, after every hold ends when `cmd` changes content. With no hold on it
   * proposes at once and hands back `propose`'s own promise: no turn of the event loop is added to the
   * path of every write (the simulator's runs, and the order of answers, stay as they were).
   */
  propose(cmd: Command, propose: (cmd: Command) => Promise<Outcome>): Promise<Outcome> {
    if (!changesContent(cmd)) return propose(cmd);
    if (!this.held) return this.track(propose(cmd));
    return this.proposeAfterHolds(cmd, propose);
  }

  private async proposeAfterHolds(
    cmd: Command,
    propose: (cmd: Command) => Promise<Outcome>,
  ): Promise<Outcome> {
    // A hold begun again while this one waited keeps it waiting.
    while (this.held) await new Promise<void>((resolve) => this.waiting.push(resolve));
    return this.track(propose(cmd));
  }

  /** Remembers a content change in flight until it is applied or failed (a hold answers after them). */
  private track(outcome: Promise<Outcome>): Promise<Outcome> {
    this.inFlight.add(outcome);
    const forget = () => this.inFlight.delete(outcome);
    outcome.then(forget, forget);
    return outcome;
  }

  /**
   * Starts (or extends) `sessionId`'s hold for `ms`, then resolves once every content change proposed
   * before it has been applied or failed. The caller then waits for the log to apply what is committed
   * (a read barrier).
   */
  async hold(sessionId: number, ms: number): Promise<void> {
    const old = this.holds.get(sessionId);
    if (old) this.env.clearTimeout(old.timer);
    const timer = this.env.setTimeout(() => this.release(sessionId), ms);
    timer.unref();
    this.holds.set(sessionId, { untilMs: this.env.now() + ms, timer });
    await Promise.allSettled([...this.inFlight]);
  }

  /**
   * Ends `sessionId`'s hold; answers whether it was still on (false: it had ended by itself, or never
   * began here). Waiting changes go once no hold is left.
   */
  release(sessionId: number): boolean {
    const h = this.holds.get(sessionId);
    if (!h) return false;
    this.env.clearTimeout(h.timer);
    this.holds.delete(sessionId);
    if (this.held) return true;
    const waiting = this.waiting;
    this.waiting = [];
    for (const go of waiting) go();
    return true;
  }

  /** Ends every hold (the member shuts down). */
  releaseAll(): void {
    for (const id of [...this.holds.keys()]) this.release(id);
  }
}
