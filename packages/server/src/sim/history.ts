/**
 * The client-visible history of the simulated workload, and its check against a counter model per object.
 *
 * A write cycle (acquire write, read the counter v at the grant, release with v + 1) is one operation
 * "increment from v": the exclusive lock makes the read and the write atomic, so it linearizes where the
 * release applies. A read cycle is "read v" at the grant. The call time is the acquire's first send; the
 * return is the release's answer (writes) or the grant (reads). A write whose release was sent but never
 * answered OK may or may not have taken effect: optional. A cycle that never got its grant wrote nothing.
 */
import {
  checkLinearizable,
  type HistoryOp,
  type LinearizabilityResult,
  type Model,
} from './linearizability.js';

export interface OpRecord {
  id: number;
  client: string;
  object: string;
  kind: 'read' | 'write';
  call: number;
  /** Infinity until answered. */
  ret: number;
  /** The counter at the grant; null until granted. */
  value: number | null;
  releaseSent: boolean;
  status: 'pending' | 'ok' | 'void';
}

interface CounterOp extends HistoryOp {
  kind: 'read' | 'write';
  value: number;
  definite: boolean;
  record: OpRecord;
}

const counterModel: Model<number, CounterOp> = {
  init: 0,
  step(state, op) {
    if (op.kind === 'read') return state === op.value ? [state] : [];
    if (op.definite) return state === op.value ? [state + 1] : [];
    // Unknown outcome: it took effect (only possible from its value) or it did not.
    return state === op.value ? [state + 1, state] : [state];
  },
  key: (s) => String(s),
};

export class History {
  readonly ops: OpRecord[] = [];

  begin(client: string, object: string, kind: 'read' | 'write', call: number): OpRecord {
    const op: OpRecord = {
      id: this.ops.length,
      client,
      object,
      kind,
      call,
      ret: Number.POSITIVE_INFINITY,
      value: null,
      releaseSent: false,
      status: 'pending',
    };
    this.ops.push(op);
    return op;
  }

  /** The operations the checker considers, per object. */
  perObject(): Map<string, CounterOp[]> {
    const out = new Map<string, CounterOp[]>();
    for (const r of this.ops) {
      if (r.status === 'void' || r.value === null) continue;
      let op: CounterOp;
      if (r.kind === 'read') {
        if (r.status !== 'ok') continue;
        op = { kind: 'read', value: r.value, definite: true, call: r.call, ret: r.ret, record: r };
      } else if (r.status === 'ok') {
        op = { kind: 'write', value: r.value, definite: true, call: r.call, ret: r.ret, record: r };
      } else if (r.releaseSent) {
        op = {
          kind: 'write',
          value: r.value,
          definite: false,
          call: r.call,
          ret: Number.POSITIVE_INFINITY,
          record: r,
        };
      } else continue;
      let list = out.get(r.object);
      if (!list) out.set(r.object, (list = []));
      list.push(op);
    }
    return out;
  }

  check(): { object: string; result: LinearizabilityResult; ops: CounterOp[] } | null {
    for (const [object, ops] of this.perObject()) {
      const result = checkLinearizable(ops, counterModel);
      if (result.ok !== true) return { object, result, ops };
    }
    return null;
  }

  counts(): { completed: number; optional: number } {
    let completed = 0;
    let optional = 0;
    for (const ops of this.perObject().values()) {
      for (const o of ops) {
        if (o.definite) completed++;
        else optional++;
      }
    }
    return { completed, optional };
  }
}

export function describeOp(o: {
  kind: string;
  value: number;
  definite: boolean;
  call: number;
  ret: number;
  record: OpRecord;
}): string {
  const what = o.kind === 'read' ? `read ${o.value}` : `inc ${o.value}->${o.value + 1}`;
  const ret = Number.isFinite(o.ret) ? String(o.ret) : '?';
  return `${o.record.client} ${what}${o.definite ? '' : ' (unknown)'} [${o.call}, ${ret}]`;
}
