/**
 * What happens on this member after the state machine applied an entry: every effect of the outcome is
 * delivered to the part that owns its connections (grants and failures to waiting acquires, pushes to
 * sessions, woken reads, ended sessions' exports and BARRIER holds).
 */
import type { Outcome } from '../core/commands.js';
import type { SnapshotExports } from './exports.js';
import type { Grants } from './grants.js';
import type { Reads } from './reads.js';
import type { Sessions } from './sessions.js';
import type { Watches } from './watches.js';
import type { WriteHold } from './write-hold.js';

export interface EffectTargets {
  readonly sessions: Sessions;
  readonly grants: Grants;
  readonly reads: Reads;
  readonly exports: SnapshotExports;
  readonly watches: Watches;
  readonly hold: WriteHold;
}

export function afterApply(outcome: Outcome, to: EffectTargets): void {
  to.reads.applied();
  for (const effect of outcome.effects) {
    switch (effect.kind) {
      case 'grant':
        to.grants.granted(effect.sessionId, effect.seq, effect.grant);
        break;
      case 'deleted':
        to.grants.deleted(effect.sessionId, effect.seq);
        break;
      case 'fail':
        to.grants.failed(effect.sessionId, effect.seq, effect.code, effect.message, effect.details);
        break;
      case 'revoke':
        for (const sid of effect.sessionIds) to.sessions.pushRevoke(sid, effect.objectId);
        break;
      case 'invalidate':
        for (const sid of effect.sessionIds)
          to.sessions.pushInvalidation(sid, effect.objectId, effect.version);
        break;
      case 'logChanged':
        to.reads.logChanged(effect.name);
        break;
      case 'sessionClosed':
        to.sessions.ended(effect.sessionId, effect.reason);
        to.exports.sessionEnded(effect.sessionId);
        to.watches.sessionEnded(effect.sessionId);
        // A coordinator that ended (or expired) holds nothing any more.
        to.hold.release(effect.sessionId);
        break;
    }
  }
}
