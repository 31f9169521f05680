/**
 * Watches (WATCH / UNWATCH): which sessions on this member want a CHANGED push for every committed change
 * of an object, whether or not they cache its pages. A watch is this member's session state, like the
 * connection a session is attached to: it is not replicated, a deposed leader forgets its watches, and a
 * client re-sends WATCH after a reconnect (the answer carries the version it may have missed).
 */
import { MAX_WATCHES_PER_SESSION, SegmemError } from '@segmem/protocol';
import type { Command, Outcome } from '../core/commands.js';
import type { NodeContext } from './context.js';
import type { Sessions } from './sessions.js';

interface Watched {
  readonly name: string;
  /** The last version pushed or answered: a change is pushed once, and a release that changed nothing not at all. */
  version: number;
  readonly sessionIds: Set<number>;
}

export class Watches {
  private readonly byId = new Map<number, Watched>();
  /** Watched objects by name: a write release or delete names its object. */
  private readonly idByName = new Map<string, number>();
  /** Objects each session watches, for the per-session bound and its end. */
  private readonly bySession = new Map<number, Set<number>>();

  constructor(
    private readonly ctx: NodeContext,
    private readonly sessions: Sessions,
  ) {}

  /**
   * WATCH: the object's id and version now; every change applied after this returns is pushed. NOT_FOUND
   * when there is no such object; INVALID_ARGUMENT beyond MAX_WATCHES_PER_SESSION.
   */
  async watch(sessionId: number, name: string): Promise<{ objectId: number; version: number }> {
    const ctx = this.ctx;
    ctx.requireLeader();
    // The version answered is at least every write acknowledged before the WATCH was sent.
    await ctx.log.readBarrier();
    ctx.requireLeader();
    this.sessions.state(sessionId); // LOCK_LOST for a session that ended meanwhile
    // From here to the return nothing else runs: the version read and the registration are one step, so no
    // change falls between the answer and the first push.
    const rec = ctx.sm.stat(name);
    if (!rec) throw new SegmemError('NOT_FOUND', `no object named "${name}"`);
    let mine = this.bySession.get(sessionId);
    if (!mine?.has(rec.id) && (mine?.size ?? 0) >= MAX_WATCHES_PER_SESSION) {
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `this session already watches ${MAX_WATCHES_PER_SESSION} objects (MAX_WATCHES_PER_SESSION); end a watch before starting another`,
        { reason: 'TOO_MANY_WATCHES', limit: MAX_WATCHES_PER_SESSION },
      );
    }
    let watched = this.byId.get(rec.id);
    if (!watched) {
      watched = { name: rec.name, version: rec.version, sessionIds: new Set() };
      this.byId.set(rec.id, watched);
      this.idByName.set(rec.name, rec.id);
    }
    watched.version = Math.max(watched.version, rec.version);
    watched.sessionIds.add(sessionId);
    if (!mine) {
      mine = new Set();
      this.bySession.set(sessionId, mine);
    }
    mine.add(rec.id);
    return { objectId: rec.id, version: rec.version };
  }

  /** UNWATCH: true when the session watched the object. */
  unwatch(sessionId: number, objectId: number): boolean {
    this.ctx.requireLeader();
    const mine = this.bySession.get(sessionId);
    if (!mine?.delete(objectId)) return false;
    if (mine.size === 0) this.bySession.delete(sessionId);
    const watched = this.byId.get(objectId);
    if (watched) {
      watched.sessionIds.delete(sessionId);
      if (watched.sessionIds.size === 0) this.forgetObject(objectId, watched);
    }
    return true;
  }

  /** After the state machine applied `cmd`: pushes a committed write release or delete of a watched object. */
  applied(cmd: Command, outcome: Outcome): void {
    if (this.byId.size === 0 || !outcome.result.ok) return;
    if (cmd.op === 'release' && cmd.mode === 'write') {
      const id = this.idByName.get(cmd.name);
      if (id === undefined) return;
      const watched = this.byId.get(id)!;
      const version = (outcome.result.value as { version: number }).version;
      if (version <= watched.version) return; // nothing changed, or a retry answered from the dedup table
      watched.version = version;
      this.push(watched, id, version);
    } else if (cmd.op === 'delete') {
      const id = this.idByName.get(cmd.name);
      if (id === undefined) return;
      const watched = this.byId.get(id)!;
      this.push(watched, id, 0);
      // A deleted object's watches end with it: a later object of the same name is another object.
      for (const sid of watched.sessionIds) {
        const mine = this.bySession.get(sid);
        mine?.delete(id);
        if (mine?.size === 0) this.bySession.delete(sid);
      }
      this.forgetObject(id, watched);
    }
  }

  /** The session ended (goodbye, expiry): its watches go with it. */
  sessionEnded(sessionId: number): void {
    const mine = this.bySession.get(sessionId);
    if (!mine) return;
    this.bySession.delete(sessionId);
    for (const id of mine) {
      const watched = this.byId.get(id);
      if (!watched) continue;
      watched.sessionIds.delete(sessionId);
      if (watched.sessionIds.size === 0) this.forgetObject(id, watched);
    }
  }

  /** This member stopped leading: its sessions go elsewhere, and re-send their watches there. */
  clear(): void {
    this.byId.clear();
    this.idByName.clear();
    this.bySession.clear();
  }

  /** How many objects `sessionId` watches (for tests and status). */
  count(sessionId: number): number {
    return this.bySession.get(sessionId)?.size ?? 0;
  }

  private push(watched: Watched, objectId: number, version: number): void {
    for (const sid of watched.sessionIds) {
      // A detached session misses the push; its client re-sends WATCH when it is back.
      const port = this.sessions.find(sid)?.port;
      if (port && !port.closed) port.changed({ objects: [[objectId, version]] });
    }
  }

  private forgetObject(objectId: number, watched: Watched): void {
    this.byId.delete(objectId);
    if (this.idByName.get(watched.name) === objectId) this.idByName.delete(watched.name);
  }
}
