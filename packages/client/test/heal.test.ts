/**
 * A cluster member whose storage is damaged heals itself from its peers: three real segmem-server
 * processes, a flipped byte in an acknowledged record of one member's WAL, and no operator step.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import type { Segment } from '../src/index.js';
import { bump, converged, untilItWorks, waitFor, withCluster } from './helpers.js';

const FILE_HEADER_BYTES = 16;
const RECORD_HEADER_BYTES = 20; // WAL format 2
/** The first payload byte of a cluster member's WAL record that holds a log entry (raft-storage.ts). */
const KIND_ENTRY = 1;

/**
 * Flips one byte in the payload of the log entry in the middle of the WAL in `walDir`; returns the file
 * and the offset of that record.
 */
function flipMiddleEntry(walDir: string): { file: string; offset: number; entries: number } {
  const found: { file: string; offset: number; length: number }[] = [];
  for (const name of readdirSync(walDir).filter((n) => n.endsWith('.wal'))) {
    const file = join(walDir, name);
    const buf = readFileSync(file);
    for (let off = FILE_HEADER_BYTES; off < buf.length; ) {
      const length = buf.readUInt32LE(off);
      if (buf[off + RECORD_HEADER_BYTES] === KIND_ENTRY) found.push({ file, offset: off, length });
      off += RECORD_HEADER_BYTES + length;
    }
  }
  const victim = found[Math.floor(found.length / 2)]!;
  const buf = readFileSync(victim.file);
  buf[victim.offset + RECORD_HEADER_BYTES + victim.length - 1]! ^= 0x20;
  writeFileSync(victim.file, buf);
  return { file: victim.file, offset: victim.offset, entries: found.length };
}

async function readAll(seg: Segment, names: string[]): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const name of names) out[name] = await seg.read(name, (h) => h.bytes.readUInt32LE(0));
  return out;
}

test.serial(
  'a member with a flipped byte in an acknowledged WAL record heals from its peers without --repair, and keeps every acknowledged update when it must be in every majority',
  async (t) => {
    await withCluster({ sessionTimeoutMs: 5000 }, async ({ cluster, seg }) => {
      const names = ['c1', 'c2', 'c3'];
      const expected: Record<string, number> = { c1: 0, c2: 0, c3: 0 };
      for (const name of names) await seg.create(name, 4);
      const bumpAll = async (rounds: number) => {
        for (let i = 0; i < rounds; i++) {
          for (const name of names) {
            await bump(seg, name);
            expected[name]!++;
          }
        }
      };
      await bumpAll(20);
      const leader = await waitFor(() => cluster.leader(), 'a leader');
      const healed = cluster.members.find((m) => m.id !== leader.id)!;
      // It holds (and acknowledged) every update so far.
      await converged(cluster);
      await healed.server!.stop();
      healed.server = null;
      const damage = flipMiddleEntry(join(healed.dataDir, 'wal'));
      t.log(`flipped a byte in the entry at ${damage.file} offset ${damage.offset} (of ${damage.entries})`);
      await bumpAll(10); // acknowledged by the other two while it is down

      const startedAt = Date.now();
      await cluster.startMember(healed.id);
      const stderr = () => cluster.member(healed.id).server!.stderr();
      try {
        const lines = stderr()
          .split('\n')
          .filter((l) => l.includes('recovery: healed'));
        t.is(lines.length, 1, stderr());
        t.true(lines[0]!.includes(`WAL damaged at ${damage.file} offset ${damage.offset}`), lines[0]);
        t.regex(lines[0]!, /Rejoining in term \d+: no vote until caught up/);
        await waitFor(
          () => /caught up from the leader after the repair/.test(stderr()),
          'the healed member to catch up',
          30_000,
        );
        t.log(`${lines[0]}\ncaught up ${Date.now() - startedAt} ms after it was started`);
        await converged(cluster);

        // The other two stop one at a time: the healed member is then in every majority, for elections
        // and for commits alike.
        for (const other of cluster.members.filter((m) => m.id !== healed.id)) {
          await other.server!.stop();
          other.server = null;
          t.deepEqual(
            await untilItWorks(
              () => readAll(seg, names),
              `a leader among ${healed.id} and the third`,
              30_000,
            ),
            expected,
            `every acknowledged update, with ${other.id} stopped`,
          );
          await bumpAll(2);
          t.deepEqual(await readAll(seg, names), expected);
          await cluster.startMember(other.id);
          await converged(cluster);
        }
      } catch (err) {
        t.log(cluster.history());
        throw err;
      }
    });
  },
);
