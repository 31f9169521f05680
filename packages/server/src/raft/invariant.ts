/**
 * Assertions that stay on in production. A failed one means the replicated log can no longer be trusted
 * (a lost write, a corrupted message, a bug), so the node stops rather than diverge; the message names the
 * invariant. The simulator reports these as the `coreInvariant` checker.
 */
export class RaftInvariantError extends Error {
  constructor(message: string) {
    super(`raft invariant: ${message}`);
    this.name = 'RaftInvariantError';
  }
}

export function invariant(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new RaftInvariantError(typeof message === 'string' ? message : message());
}
