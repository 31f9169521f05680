/** Majority arithmetic for a single (non-joint) configuration. */
import type { NodeId } from './types.js';

/** Votes or acknowledgements needed among `voters` members. */
export function majority(voters: number): number {
  return Math.floor(voters / 2) + 1;
}

/**
 * The largest index that a majority of `voters` has (their match indexes from `matchOf`): the commit index
 * candidate. 0 for an empty configuration, which can commit nothing.
 */
export function committedIndex(voters: readonly NodeId[], matchOf: (id: NodeId) => number): number {
  const n = voters.length;
  if (n === 0) return 0;
  if (n === 1) return matchOf(voters[0]!);
  const matches = new Array<number>(n);
  for (let i = 0; i < n; i++) matches[i] = matchOf(voters[i]!);
  matches.sort((a, b) => b - a);
  return matches[majority(n) - 1]!;
}

/** The same as {@link committedIndex}, written as plainly as possible, for property tests to compare against. */
export function naiveCommittedIndex(voters: readonly NodeId[], matchOf: (id: NodeId) => number): number {
  let best = 0;
  for (const candidate of voters) {
    const index = matchOf(candidate);
    let count = 0;
    for (const v of voters) if (matchOf(v) >= index) count++;
    if (count >= majority(voters.length) && index > best) best = index;
  }
  return best;
}
