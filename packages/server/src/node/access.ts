/**
 * Who may do what: the principal a connection logged in as, and the right each request needs.
 *
 * - `admin`: the holder of the cluster token, or an in-process (embedded) connection: every right.
 * - `user`: a user of the replicated users table; its right on a name is the strongest of its rules whose
 *   prefix starts the name (read < write < admin). Cluster-wide operations (membership changes, snapshots,
 *   users and rules) need `admin` on the empty prefix. Rules are read at each request, so a change applies
 *   at once to sessions already open; a removed user's sessions lose every right.
 * - `anonymous`: no credentials, accepted only while the group has no users (then it has every right, as
 *   before users existed); once a user exists it has none.
 */
import { type AccessRight, rightCovers, rightOn, SegmemError } from '@segmem/protocol';
import type { StateMachine } from '../core/state-machine.js';

export type Principal = { kind: 'admin' } | { kind: 'anonymous' } | { kind: 'user'; name: string };

export const ADMIN: Principal = { kind: 'admin' };
export const ANONYMOUS: Principal = { kind: 'anonymous' };

/** The principal's right on `name` ('' for cluster-wide operations), or null for none. */
export function rightFor(sm: StateMachine, principal: Principal, name: string): AccessRight | null {
  switch (principal.kind) {
    case 'admin':
      return 'admin';
    case 'anonymous':
      return sm.hasUsers() ? null : 'admin';
    case 'user': {
      const rules = sm.userRules(principal.name);
      return rules ? rightOn(rules, name) : null;
    }
  }
}

/** True when the principal may do what `right` allows on `name`. */
export function may(sm: StateMachine, principal: Principal, right: AccessRight, name: string): boolean {
  return rightCovers(rightFor(sm, principal, name), right);
}

/**
 * Throws UNAUTHORIZED with details { reason: 'FORBIDDEN', right, name } unless the principal has `right` on
 * `name`; `name` null: a cluster-wide operation (admin on every name).
 */
export function requireRight(
  sm: StateMachine,
  principal: Principal,
  right: AccessRight,
  name: string | null,
): void {
  const err = accessError(sm, principal, right, name);
  if (err) throw err;
}

/** {@link requireRight}'s error, returned instead of thrown (null: allowed). */
export function accessError(
  sm: StateMachine,
  principal: Principal,
  right: AccessRight,
  name: string | null,
): SegmemError | null {
  if (may(sm, principal, right, name ?? '')) return null;
  const who = principal.kind === 'user' ? `user ${principal.name}` : 'a client without credentials';
  return new SegmemError(
    'UNAUTHORIZED',
    name === null
      ? `${who} may not do this: it needs the admin right on every name`
      : `${who} has no ${right} right on ${JSON.stringify(name)}`,
    { reason: 'FORBIDDEN', right, name },
  );
}

/** True when the principal has the admin right on every name (snapshots, other sessions' exports). */
export function isAdmin(sm: StateMachine, principal: Principal): boolean {
  return may(sm, principal, 'admin', '');
}
