/**
 * Safety checkers that run beside the simulation, on every observation (tigerbeetle's state_checker idea):
 * - electionSafety: at most one leader per term, ever;
 * - logMatching: two logs with an entry of the same index and term hold the same entry there and the same
 *   term just before it (by induction: identical logs up to it);
 * - committedStable: an entry once seen committed (applied anywhere) never changes: no node applies, stores,
 *   or snapshots anything else at its index, and every new leader's log holds it (leader completeness);
 * - stateMachineAgreement: nodes that applied the same log prefix have the same state machine digest;
 * - durability (checked by the simulator at each crash): what a node acknowledged (its last accepted
 *   append, its vote) is still on its disk after the crash.
 * (That each node applies committed entries once and in order is asserted by the Raft driver itself, in
 * the server too; the simulator reports it as `coreInvariant`.)
 * A violation throws {@link Violation}, naming the checker.
 */
import { type Entry, entryParts, type NodeId, type Snapshot } from '../raft/types.js';

export type CheckerName =
  | 'electionSafety'
  | 'logMatching'
  | 'committedStable'
  | 'stateMachineAgreement'
  | 'durability'
  | 'linearizability'
  | 'logAppends'
  | 'liveness'
  | 'coreInvariant'
  | 'crash';

export class Violation extends Error {
  constructor(
    readonly checker: CheckerName,
    message: string,
  ) {
    super(message);
    this.name = 'Violation';
  }
}

interface SeenEntry {
  prevTerm: number;
  data: Buffer;
  type: Entry['type'];
  node: NodeId;
}

/** An entry's bytes in one buffer (a proposal's entry holds its payload apart). */
function wholeData(e: Entry): Buffer {
  return e.payload ? Buffer.concat(entryParts(e)) : e.data;
}

function sameData(a: Buffer, b: Buffer): boolean {
  return a === b || a.equals(b);
}

export class SafetyChecker {
  private readonly leaders = new Map<number, NodeId>();
  /** index -> term -> the entry first seen there (log matching). */
  private readonly seen = new Map<number, Map<number, SeenEntry>>();
  /** index -> the committed entry first seen there. */
  private readonly committed = new Map<number, { term: number; data: Buffer; node: NodeId }>();
  private maxCommitted = 0;
  /** applied index -> digest of the state machine after it, first seen. */
  private readonly digests = new Map<number, { digest: string; node: NodeId }>();
  leaderTerms = 0;

  get highestCommitted(): number {
    return this.maxCommitted;
  }

  leaderOf(term: number): NodeId | undefined {
    return this.leaders.get(term);
  }

  onLeader(node: NodeId, term: number): void {
    const known = this.leaders.get(term);
    if (known === undefined) {
      this.leaders.set(term, node);
      this.leaderTerms++;
    } else if (known !== node) {
      throw new Violation('electionSafety', `two leaders in term ${term}: ${known} and ${node}`);
    }
  }

  /** A new leader's log must hold every entry seen committed (above its own snapshot). */
  onNewLeader(node: NodeId, termAt: (i: number) => number | undefined, firstIndex: number): void {
    for (let i = Math.max(1, firstIndex - 1); i <= this.maxCommitted; i++) {
      const c = this.committed.get(i);
      if (!c) continue;
      const t = termAt(i);
      if (t !== c.term) {
        throw new Violation(
          'committedStable',
          `new leader ${node} lacks committed entry ${i} (term ${c.term}, first seen on ${c.node}); it has term ${t ?? 'none'}`,
        );
      }
    }
  }

  /**
   * Entries a node is about to persist. prevTermOf gives the term of the entry before each one in the
   * node's log; storedTermOf what its disk holds at an index now (before the write).
   */
  onPersist(
    node: NodeId,
    entries: readonly Entry[],
    prevTermOf: (i: number) => number | undefined,
    storedTermOf: (i: number) => number | undefined,
  ): void {
    for (const e of entries) {
      const prevTerm = prevTermOf(e.index - 1);
      if (prevTerm === undefined) {
        throw new Violation('logMatching', `${node} stores entry ${e.index} without the entry before it`);
      }
      let byTerm = this.seen.get(e.index);
      if (!byTerm) this.seen.set(e.index, (byTerm = new Map()));
      const s = byTerm.get(e.term);
      if (!s) byTerm.set(e.term, { prevTerm, data: wholeData(e), type: e.type, node });
      else if (s.prevTerm !== prevTerm || s.type !== e.type || !sameData(s.data, wholeData(e))) {
        throw new Violation(
          'logMatching',
          `entry ${e.index} term ${e.term} differs between ${s.node} and ${node} (previous term ${s.prevTerm} vs ${prevTerm})`,
        );
      }
      // A stale leader may well write an entry at an index committed elsewhere (it never had that entry;
      // it will be truncated). What must never happen is a node destroying a committed entry it holds.
      const c = this.committed.get(e.index);
      if (c && c.term !== e.term && storedTermOf(e.index) === c.term) {
        throw new Violation(
          'committedStable',
          `${node} overwrites committed entry ${e.index} (term ${c.term}, first seen on ${c.node}) with term ${e.term}`,
        );
      }
    }
  }

  onSnapshot(node: NodeId, snap: Snapshot): void {
    const c = this.committed.get(snap.meta.index);
    if (c && c.term !== snap.meta.term) {
      throw new Violation(
        'committedStable',
        `${node} installs a snapshot at ${snap.meta.index} of term ${snap.meta.term}, but the committed entry there has term ${c.term}`,
      );
    }
  }

  onApply(node: NodeId, e: Entry): void {
    const c = this.committed.get(e.index);
    if (!c) {
      this.committed.set(e.index, { term: e.term, data: wholeData(e), node });
      if (e.index > this.maxCommitted) this.maxCommitted = e.index;
    } else if (c.term !== e.term || !sameData(c.data, wholeData(e))) {
      throw new Violation(
        'committedStable',
        `${node} applies entry ${e.index} of term ${e.term}, but ${c.node} applied one of term ${c.term} there`,
      );
    }
  }

  onDigest(node: NodeId, index: number, digest: string): void {
    const d = this.digests.get(index);
    if (!d) this.digests.set(index, { digest, node });
    else if (d.digest !== digest) {
      throw new Violation(
        'stateMachineAgreement',
        `state machines differ after entry ${index}: ${d.node} has ${d.digest}, ${node} has ${digest}`,
      );
    }
  }
}
