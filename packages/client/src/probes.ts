/**
 * Deadlocks across shard groups, found by edge chasing (Chandy–Misra–Haas). Each group's servers refuse a
 * wait that would close a cycle inside the group, but a cycle through two groups is seen by neither: client
 * A holds x in group 1 and waits for y in group 2, while B holds y and waits for x.
 *
 * The processes of the algorithm are clients (one hub per client, over its sessions in every group). A wait
 * at the servers that lasts PROBE_AFTER_MS sends a PROBE into its group; that group's leader pushes PROBED
 * to every session the wait is behind (the holders and the conflicting waits queued ahead). A client that
 * receives one passes it on into every group where it waits itself. When a probe comes back to the client
 * that started it, its wait closes a cycle, and that client gives it up (CANCEL with reason DEADLOCK; the
 * servers answer the wait with DEADLOCK). Probes repeat while the wait lasts, so a cycle is broken within
 * about PROBE_AFTER_MS + PROBE_EVERY_MS + a few round trips.
 *
 * Exactly one wait per cycle is given up: a client passes on only probes started by a client whose id is
 * above its own, so only the probe of the cycle's highest id travels the whole cycle. A probe that reaches
 * a grant this client keeps with no handle using it stops there: the servers have asked for that grant back,
 * and giving it back ends the wait without anyone failing.
 */
import { CLIENT_ID_BYTES, type Env, type EnvTimer, MAX_PROBE_HOPS, type Probed } from '@segmem/protocol';

/** A wait probes after lasting this long (a short wait needs no search). */
export const PROBE_AFTER_MS = 300;
/** A waiting client sends its probes again this often, and forwards what it receives at once. */
export const PROBE_EVERY_MS = 250;
/** A probe passed on is not passed on again for this long (two paths to one client). */
const FORWARDED_MEMORY_MS = 5_000;

/** A group's session, as the hub uses it. */
export interface ProbeGroup {
  /** Sends a PROBE into this group on behalf of the waits this session has there (best effort). */
  sendProbe(initiator: string, probeId: number, hops: number): void;
  /** Gives up the wait `requestId` of this session: CANCEL with reason DEADLOCK (best effort). */
  cancelForDeadlock(requestId: number): void;
  /** Whether this session keeps a grant of `name` that no handle uses (the servers get it back on revoke). */
  keepsIdleGrant(name: string): boolean;
}

interface Wait {
  group: ProbeGroup;
  requestId: number;
  sinceMs: number;
  /** The probes sent for this wait (so a late answer to an ended wait is ignored). */
  probeIds: number[];
  cancelled: boolean;
}

export class ProbeHub {
  /** This client's id in probes: CLIENT_ID_BYTES random bytes, lowercase hex. */
  readonly clientId: string;
  private readonly waits = new Set<Wait>();
  private readonly waitByProbe = new Map<number, Wait>();
  private readonly forwarded = new Map<string, number>();
  private nextProbeId = 1;
  private timer: EnvTimer | null = null;
  private closed = false;

  constructor(private readonly env: Env) {
    this.clientId = env.randomBytes(CLIENT_ID_BYTES).toString('hex');
  }

  /** How many probes of this client's own came back (cycles it broke); for tests and stats. */
  cyclesBroken = 0;
  /** @internal Unsafe, for the simulator's broken variant: no wait is probed, so no cycle across groups is found. */
  unsafeOff = false;

  /** A wait at `group`'s servers began (an ACQUIRE or DELETE queued there). Call the result when it ends. */
  waitStarted(group: ProbeGroup, requestId: number): () => void {
    if (this.unsafeOff) return () => {};
    const wait: Wait = { group, requestId, sinceMs: this.env.now(), probeIds: [], cancelled: false };
    this.waits.add(wait);
    if (!this.timer && !this.closed) {
      this.timer = this.env.setInterval(() => this.tick(), PROBE_EVERY_MS);
      this.timer.unref();
    }
    return () => {
      this.waits.delete(wait);
      for (const id of wait.probeIds) this.waitByProbe.delete(id);
      if (this.waits.size === 0) this.stopTimer();
    };
  }

  /** A PROBED push arrived on `group`'s session. */
  onProbed(group: ProbeGroup, msg: Probed): void {
    if (this.closed) return;
    if (msg.initiator === this.clientId) {
      const wait = this.waitByProbe.get(msg.probeId);
      if (!wait || wait.cancelled || !this.waits.has(wait)) return;
      wait.cancelled = true;
      this.cyclesBroken++;
      wait.group.cancelForDeadlock(wait.requestId);
      return;
    }
    // Only the cycle's highest id is given up: a lower one's probe stops at the first higher client.
    if (msg.initiator < this.clientId || msg.hops >= MAX_PROBE_HOPS) return;
    if (group.keepsIdleGrant(msg.name)) return;
    const key = `${msg.initiator}:${msg.probeId}`;
    if (this.forwarded.has(key)) return;
    const groups = new Set<ProbeGroup>();
    for (const w of this.waits) groups.add(w.group);
    if (groups.size === 0) return;
    this.forwarded.set(key, this.env.now() + FORWARDED_MEMORY_MS);
    for (const g of groups) g.sendProbe(msg.initiator, msg.probeId, msg.hops);
  }

  close(): void {
    this.closed = true;
    this.stopTimer();
    this.waits.clear();
    this.waitByProbe.clear();
  }

  private tick(): void {
    const now = this.env.now();
    for (const [key, until] of this.forwarded) if (until <= now) this.forwarded.delete(key);
    for (const wait of this.waits) {
      if (wait.cancelled || now - wait.sinceMs < PROBE_AFTER_MS) continue;
      const probeId = this.nextProbeId;
      this.nextProbeId = probeId >= 0xffffffff ? 1 : probeId + 1;
      // A wait remembers its last few probes only: an older one still travelling is as good as lost.
      if (wait.probeIds.length >= 8) this.waitByProbe.delete(wait.probeIds.shift()!);
      wait.probeIds.push(probeId);
      this.waitByProbe.set(probeId, wait);
      wait.group.sendProbe(this.clientId, probeId, 0);
    }
  }

  private stopTimer(): void {
    this.env.clearInterval(this.timer);
    this.timer = null;
  }
}
