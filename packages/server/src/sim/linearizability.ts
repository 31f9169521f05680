/**
 * A linearizability checker in the style of Wing & Gong, with Lowe's memoization of visited
 * (linearized set, state) pairs (as in Knossos and Porcupine). Operations whose outcome is unknown (no
 * answer ever came) return at +Infinity and the model may let them take effect or not.
 */

export interface HistoryOp {
  /** Invocation and response times (a total order of events); ret = Infinity when never answered. */
  call: number;
  ret: number;
}

export interface Model<S, O extends HistoryOp> {
  init: S;
  /** The states the operation can lead to from `state` (none: it cannot happen there). */
  step(state: S, op: O): S[];
  key(state: S): string;
}

export type LinearizabilityResult =
  | { ok: true }
  | { ok: false; reason: string; longestPrefix: number }
  | { ok: 'unknown'; reason: string };

interface Event {
  op: number;
  isCall: boolean;
  match: Event | null;
  prev: Event | null;
  next: Event | null;
}

export function checkLinearizable<S, O extends HistoryOp>(
  ops: readonly O[],
  model: Model<S, O>,
  maxSteps = 2_000_000,
): LinearizabilityResult {
  if (ops.length === 0) return { ok: true };
  const raw: { time: number; isCall: boolean; op: number }[] = [];
  ops.forEach((o, i) => {
    raw.push({ time: o.call, isCall: true, op: i });
    raw.push({ time: o.ret, isCall: false, op: i });
  });
  // By time; at equal times (only +Infinity can tie), calls before returns, then by op.
  raw.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? a.op - b.op : a.isCall ? -1 : 1));
  const head: Event = { op: -1, isCall: false, match: null, prev: null, next: null };
  let tail = head;
  const calls: Event[] = new Array(ops.length);
  for (const r of raw) {
    const e: Event = { op: r.op, isCall: r.isCall, match: null, prev: tail, next: null };
    tail.next = e;
    tail = e;
    if (r.isCall) calls[r.op] = e;
    else calls[r.op]!.match = e;
  }
  const lift = (e: Event) => {
    e.prev!.next = e.next;
    if (e.next) e.next.prev = e.prev;
    const m = e.match!;
    m.prev!.next = m.next;
    if (m.next) m.next.prev = m.prev;
  };
  const unlift = (e: Event) => {
    const m = e.match!;
    m.prev!.next = m;
    if (m.next) m.next.prev = m;
    e.prev!.next = e;
    if (e.next) e.next.prev = e;
  };

  const cache = new Set<string>();
  const stack: { entry: Event; state: S; alts: S[]; alt: number }[] = [];
  let state = model.init;
  let bits = 0n;
  let entry: Event | null = head.next;
  let longest = 0;
  let steps = 0;

  // Tries alternatives [from, alts.length) of `e` from the current state; true if one was taken.
  const tryAlts = (e: Event, alts: S[], from: number): boolean => {
    const nb = bits | (1n << BigInt(e.op));
    const prefix = `${nb.toString(36)}|`;
    for (let a = from; a < alts.length; a++) {
      const k = prefix + model.key(alts[a]!);
      if (cache.has(k)) continue;
      cache.add(k);
      stack.push({ entry: e, state, alts, alt: a });
      state = alts[a]!;
      bits = nb;
      lift(e);
      if (stack.length > longest) longest = stack.length;
      return true;
    }
    return false;
  };

  while (head.next !== null) {
    if (++steps > maxSteps) return { ok: 'unknown', reason: `gave up after ${maxSteps} steps` };
    if (entry === null)
      return { ok: false, reason: 'ran off the end of the history', longestPrefix: longest };
    if (entry.isCall) {
      const alts = model.step(state, ops[entry.op]!);
      if (alts.length > 0 && tryAlts(entry, alts, 0)) entry = head.next;
      else entry = entry.next;
      continue;
    }
    // A response whose operation could not be placed before it: undo the last choice.
    let resumed = false;
    while (!resumed) {
      const frame = stack.pop();
      if (!frame) return { ok: false, reason: 'no linearization exists', longestPrefix: longest };
      unlift(frame.entry);
      state = frame.state;
      bits &= ~(1n << BigInt(frame.entry.op));
      if (tryAlts(frame.entry, frame.alts, frame.alt + 1)) {
        entry = head.next;
        resumed = true;
      } else {
        entry = frame.entry.next;
        resumed = true;
      }
    }
  }
  return { ok: true };
}
