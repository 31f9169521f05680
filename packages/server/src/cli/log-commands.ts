/** `segmem log tail|info`: reading a shared log from the command line. */
import { logRecords, MAX_LOG_READ_BYTES, validateName } from '@segmem/protocol';
import { AdminSession } from './admin-client.js';
import { parseCount, UsageError } from './args.js';
import {
  CONNECTION_OPTIONS,
  type Command,
  connectionOf,
  escapeText,
  JSON_OPTION,
  json,
  out,
} from './common.js';

/** How long a followed read waits on the server before asking again. */
const TAIL_WAIT_MS = 10_000;

function logName(value: string): string {
  try {
    return validateName(value);
  } catch (err) {
    throw new UsageError(`NAME: ${(err as Error).message}`, null);
  }
}

export const logTail: Command = {
  name: 'log tail',
  args: [{ name: 'NAME' }],
  summary: 'print the records of shared log NAME',
  description: `Prints the records of shared log NAME from sequence number SEQ (default: the oldest kept), one
    per line as "SEQ TEXT", TEXT being the record as UTF-8 with \\, newline, carriage return and tab escaped
    as \\\\, \\n, \\r and \\t, other control characters as \\xNN and bidi controls as \\u{NNNN}; or,
    with --json, as {"seq":N,"data":"<base64>"}. Without --follow it exits after the last record; with
    --follow it keeps waiting for new ones (the leader pushes them) until Ctrl-C, and carries on across a failover from the next sequence number. NOT_FOUND for a log that does not exist or
    records already truncated.`,
  options: [
    { name: 'from', value: 'SEQ', help: 'the first sequence number to print', default: 'the oldest kept' },
    { name: 'follow', help: 'keep waiting for new records until Ctrl-C' },
    JSON_OPTION,
    ...CONNECTION_OPTIONS,
  ],
  async run(p) {
    const name = logName(p.args[0]!);
    const fromArg = p.values.get('from');
    let from: number | null = fromArg === undefined ? null : parseCount('--from', fromArg);
    const follow = p.flags.has('follow');
    const asJson = p.flags.has('json');
    const session = new AdminSession(connectionOf(p));
    let stop = false;
    const interrupted = () => {
      stop = true;
      void session.close().then(() => process.exit(0));
    };
    process.once('SIGINT', interrupted);
    try {
      while (!stop) {
        const waitMs = follow ? TAIL_WAIT_MS : 0;
        const r = await session.call(
          { type: 'LOG_READ', name, from, maxBytes: MAX_LOG_READ_BYTES, waitMs },
          waitMs,
        );
        let text = '';
        for (const [i, data] of logRecords(r).entries()) {
          text += asJson
            ? `${JSON.stringify({ seq: r.from + i, data: data.toString('base64') })}\n`
            : `${r.from + i} ${escapeText(data.toString('utf8'))}\n`;
        }
        if (text) await out(text);
        from = r.from + r.sizes.length;
        if (!follow && from >= r.next) break;
      }
    } finally {
      process.off('SIGINT', interrupted);
      await session.close();
    }
    return 0;
  },
};

export const logInfo: Command = {
  name: 'log info',
  args: [{ name: 'NAME' }],
  summary: "a shared log's first and next sequence numbers and its size",
  description: `Prints "log NAME: first F, next N, B bytes": the oldest record kept, the sequence number the
    next record will get, and the bytes the kept records take. NOT_FOUND for a log that does not exist.`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const name = logName(p.args[0]!);
    const session = new AdminSession(connectionOf(p));
    try {
      const r = await session.call({ type: 'LOG_READ', name, from: null, maxBytes: 0, waitMs: 0 });
      if (p.flags.has('json')) await json({ name, first: r.first, next: r.next, bytes: r.bytes });
      else await out(`log ${escapeText(name)}: first ${r.first}, next ${r.next}, ${r.bytes} bytes\n`);
    } finally {
      await session.close();
    }
    return 0;
  },
};
