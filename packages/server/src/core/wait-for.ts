/**
 * Deadlock detection over the wait-for graph of the lock queues.
 *
 * Vertices are sessions; a session that waits (an acquire or a delete queued on an object) has an edge to
 * every other session it waits for there: the holders whose grant conflicts with the wait, and, because
 * queues are served first in, first out, the sessions of the conflicting waits queued before it. Reads
 * conflict only with writes and deletes; writes and deletes conflict with everything. A session's own holds
 * and waits never give it an edge to itself: a process's tasks share its session, and one task holding an
 * object while another waits for it is a queue, not a deadlock (the holder releases on its own).
 *
 * The state machine keeps the graph acyclic: it runs {@link findCycle} each time an acquire or delete is
 * about to queue and refuses that one when it would close a cycle. Nothing else adds an edge (a grant turns
 * an edge to an earlier waiter into an edge to the same session as holder; cancels, closes and deletions
 * only remove edges), so every cycle that could form runs through the new wait, and the new wait is the
 * youngest of its cycle. The search visits each waiting session at most once.
 */

/** How the state machine's locks look to the search. */
export interface WaitGraph {
  /**
   * The sessions `sessionId` waits for through its queued waits, with the object of each edge. Only the
   * sessions that themselves wait, or `target`, matter: the others cannot lead back.
   */
  edges(sessionId: number, target: number): Iterable<WaitEdge>;
}

export interface WaitEdge {
  /** The session waited for. */
  to: number;
  /** The object the wait is on. */
  objectId: number;
}

/**
 * Whether the session `start`, about to wait on object `objectId` for the sessions `blockers`, would close
 * a cycle of waits. Returns the ids of the objects around the cycle, starting with `objectId`, or null.
 */
export function findCycle(
  graph: WaitGraph,
  start: number,
  objectId: number,
  blockers: Iterable<number>,
): number[] | null {
  // Depth-first from the blockers back to `start`; `via` records how each session was reached.
  const via = new Map<number, { from: number; objectId: number }>();
  const stack: number[] = [];
  for (const b of blockers) {
    if (b === start || via.has(b)) continue;
    via.set(b, { from: start, objectId });
    stack.push(b);
  }
  while (stack.length > 0) {
    const s = stack.pop()!;
    for (const e of graph.edges(s, start)) {
      if (e.to === s) continue;
      if (e.to === start) return path(via, s, e.objectId, start);
      if (via.has(e.to)) continue;
      via.set(e.to, { from: s, objectId: e.objectId });
      stack.push(e.to);
    }
  }
  return null;
}

function path(
  via: Map<number, { from: number; objectId: number }>,
  last: number,
  lastObjectId: number,
  start: number,
): number[] {
  const objects = [lastObjectId];
  for (let s = last; s !== start; ) {
    const step = via.get(s)!;
    objects.push(step.objectId);
    s = step.from;
  }
  return objects.reverse();
}
