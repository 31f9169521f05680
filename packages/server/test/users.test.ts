/**
 * Users and ACL rules in the replicated state machine: the commands, their refusals, snapshots (new and old
 * formats) and the content check of the users table. The password hashing and the login live in
 * node/passwords.ts, tested at the end against a real scrypt.
 */
import {
  type AclRule,
  DEFAULT_SCRYPT,
  MAX_RULES_PER_USER,
  type PasswordHash,
  SegmemError,
} from '@segmem/protocol';
import test from 'ava';
import { Packr } from 'msgpackr';
import { type Command, decodeCommand, encodeCommand, mustSync, type Outcome } from '../src/core/commands.js';
import { checkUsers } from '../src/core/content-check.js';
import { StateMachine } from '../src/core/state-machine.js';
import { hashPassword, LoginGate, verifyPassword } from '../src/node/passwords.js';
import { decodeConsolidated, encodeConsolidated } from '../src/storage/consolidated.js';

const PAGE = 4096;

function machine() {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE });
  let index = 0;
  const run = (cmd: Command): Outcome => sm.apply(++index, cmd);
  const session = (run({ op: 'open', timeoutMs: 1000, clientName: null }).result as any).value
    .sessionId as number;
  let seq = 0;
  const users = (cmd: Record<string, unknown>): Outcome =>
    run({ sessionId: session, seq: ++seq, ...cmd } as unknown as Command);
  return { sm, run, users, session };
}

const hashA: PasswordHash = { salt: '0'.repeat(32), n: 1024, r: 8, p: 1, hash: 'a'.repeat(64) };

test('users and rules are added, listed, changed and removed; the password hash is never listed', (t) => {
  const { sm, users } = machine();
  t.false(sm.hasUsers());
  t.like(users({ op: 'userAdd', user: 'alice', password: hashA }).result, { ok: true });
  t.true(sm.hasUsers());
  t.like(users({ op: 'userAdd', user: 'alice', password: hashA }).result, {
    ok: false,
    code: 'ALREADY_EXISTS',
  });
  t.like(users({ op: 'aclSet', user: 'alice', prefix: 'jobs/', right: 'read' }).result, { ok: true });
  t.like(users({ op: 'aclSet', user: 'alice', prefix: '', right: 'read' }).result, { ok: true });
  // Setting an existing prefix replaces its right.
  const changed = users({ op: 'aclSet', user: 'alice', prefix: 'jobs/', right: 'write' }).result as any;
  t.deepEqual(changed.value.users, [
    {
      name: 'alice',
      rules: [
        ['', 'read'],
        ['jobs/', 'write'],
      ],
    },
  ]);
  t.like(users({ op: 'aclSet', user: 'bob', prefix: 'a', right: 'read' }).result, {
    ok: false,
    code: 'NOT_FOUND',
  });
  t.like(users({ op: 'aclRemove', user: 'alice', prefix: 'nope/' }).result, { ok: false, code: 'NOT_FOUND' });
  t.like(users({ op: 'aclRemove', user: 'alice', prefix: '' }).result, { ok: true });
  t.deepEqual(sm.userRules('alice'), [['jobs/', 'write']]);
  t.deepEqual(sm.userPassword('alice'), hashA);
  users({ op: 'userAdd', user: 'bob', password: hashA });
  t.deepEqual(
    sm.listUsers().map((u) => u.name),
    ['alice', 'bob'],
  );
  t.false(JSON.stringify(sm.listUsers()).includes(hashA.hash), 'listing carries no hash');
  users({ op: 'userAdd', user: 'root', password: hashA, rules: [['', 'admin']] });
  t.deepEqual(sm.listUsers('root'), [{ name: 'root', rules: [['', 'admin']] }]);
  t.like(users({ op: 'userAdd', user: 'eve', password: hashA, rules: [['', 'god']] }).result, {
    ok: false,
    code: 'INVALID_ARGUMENT',
  });
  t.like(users({ op: 'userRemove', user: 'alice' }).result, { ok: true });
  t.like(users({ op: 'userRemove', user: 'alice' }).result, { ok: false, code: 'NOT_FOUND' });
  t.is(sm.userRules('alice'), null);
  t.deepEqual(sm.listUsers('bob'), [{ name: 'bob', rules: [] }]);
});

test('bad user commands are refused and change nothing', (t) => {
  const { sm, users } = machine();
  const before = sm.digest();
  for (const cmd of [
    { op: 'userAdd', user: 'b b', password: hashA },
    { op: 'userAdd', user: 'bob', password: { ...hashA, hash: 'ab' } },
    { op: 'userAdd', user: 'bob', password: { ...hashA, salt: 'zz'.repeat(16) } },
    { op: 'userAdd', user: 'bob', password: { ...hashA, n: 2 ** 22 } },
  ]) {
    t.like(users(cmd).result, { ok: false, code: 'INVALID_ARGUMENT' }, JSON.stringify(cmd));
  }
  // The dedup results changed (each seq remembered), nothing else: compare the users alone.
  t.false(sm.hasUsers());
  t.not(before, '');
  users({ op: 'userAdd', user: 'bob', password: hashA });
  t.like(users({ op: 'aclSet', user: 'bob', prefix: 'a', right: 'owner' }).result, {
    ok: false,
    code: 'INVALID_ARGUMENT',
  });
  t.like(users({ op: 'aclSet', user: 'bob', prefix: 'a\u0000', right: 'read' }).result, {
    ok: false,
    code: 'INVALID_ARGUMENT',
  });
  for (let i = 0; i < MAX_RULES_PER_USER; i++)
    t.like(users({ op: 'aclSet', user: 'bob', prefix: `p${i}/`, right: 'read' }).result, { ok: true });
  t.like(users({ op: 'aclSet', user: 'bob', prefix: 'one-more/', right: 'read' }).result, {
    ok: false,
    code: 'INVALID_ARGUMENT',
  });
  // Replacing an existing rule's right is no new rule.
  t.like(users({ op: 'aclSet', user: 'bob', prefix: 'p0/', right: 'admin' }).result, { ok: true });
  t.is(sm.userRules('bob')!.length, MAX_RULES_PER_USER);
});

test('user commands are durable, round trip through the log codec, and a retried one applies once', (t) => {
  const { run, users, session } = machine();
  const cmd: Command = { op: 'userAdd', sessionId: session, seq: 100, user: 'carol', password: hashA };
  t.true(mustSync(cmd));
  t.deepEqual(decodeCommand(Buffer.concat(encodeCommand(cmd))), cmd);
  t.like(run(cmd).result, { ok: true });
  t.like(
    run(cmd).result,
    { ok: true },
    'the same (session, seq) answers its first result, not ALREADY_EXISTS',
  );
  t.like(users({ op: 'userAdd', user: 'carol', password: hashA }).result, {
    ok: false,
    code: 'ALREADY_EXISTS',
  });
});

test('snapshots keep users and rules; a snapshot and its frozen view agree; format 3 snapshots still restore', (t) => {
  const { sm, users } = machine();
  users({ op: 'userAdd', user: 'zed', password: hashA });
  users({ op: 'userAdd', user: 'amy', password: { ...hashA, hash: 'b'.repeat(64) } });
  users({ op: 'aclSet', user: 'amy', prefix: 'x/', right: 'admin' });
  users({ op: 'aclSet', user: 'amy', prefix: 'a/', right: 'read' });
  const bytes = sm.snapshot();
  const view = sm.freeze();
  t.deepEqual(Buffer.concat(view.parts as Buffer[]), bytes);
  view.release();
  const back = StateMachine.restore(bytes);
  t.deepEqual(back.listUsers(), sm.listUsers());
  t.deepEqual(back.userPassword('amy'), sm.userPassword('amy'));
  t.is(back.digest(), sm.digest());

  // A snapshot written before users existed: format 3, nine elements.
  const codec = new Packr({
    useRecords: false,
    mapsAsObjects: true,
    int64AsType: 'number',
    moreTypes: false,
  });
  const old = codec.unpack(
    new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE }).snapshot(),
  ) as unknown[];
  const format3 = codec.pack([3, ...old.slice(1, 9)]);
  const restored = StateMachine.restore(format3);
  t.false(restored.hasUsers());
});

test('the content check refuses a bad users table, naming the field', (t) => {
  const good = ['amy', hashA.salt, hashA.n, hashA.r, hashA.p, hashA.hash, [['a/', 'read']] as AclRule[]];
  t.notThrows(() => checkUsers('snapshot', [good]));
  const cases: [unknown, string][] = [
    [[good, good], 'name'],
    [[['a b', ...good.slice(1)]], 'name'],
    [[[...good.slice(0, 5), 'ab', good[6]]], 'password'],
    [[[good[0], 'short', ...good.slice(2)]], 'password'],
    [[[...good.slice(0, 2), 3000, ...good.slice(3)]], 'password'],
    [
      [
        [
          ...good.slice(0, 6),
          [
            ['a/', 'read'],
            ['a/', 'write'],
          ],
        ],
      ],
      'rules',
    ],
    [[[...good.slice(0, 6), [['a/', 'root']]]], 'rules'],
    [[good.slice(0, 6)], 'users'],
    ['nope', 'users'],
  ];
  for (const [users, field] of cases) {
    const err = t.throws(() => checkUsers('snapshot', users), { instanceOf: SegmemError }) as SegmemError;
    t.is(err.code, 'INVALID_ARGUMENT');
    t.like(err.details, { reason: 'BAD_SNAPSHOT', field }, err.message);
  }
  // And a snapshot holding such a table is refused whole.
  const codec = new Packr({
    useRecords: false,
    mapsAsObjects: true,
    int64AsType: 'number',
    moreTypes: false,
  });
  const parts = codec.unpack(
    new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE }).snapshot(),
  ) as unknown[];
  parts[9] = [good, good];
  t.throws(() => StateMachine.restore(codec.pack(parts)), { message: /also the name of another user/ });
});

test('passwords: scrypt with a random salt; verify accepts the password and nothing else', async (t) => {
  const h = await hashPassword('correct horse');
  t.is(h.n, DEFAULT_SCRYPT.n);
  t.is(h.salt.length, 32);
  t.is(h.hash.length, 64);
  const again = await hashPassword('correct horse');
  t.not(again.salt, h.salt, 'a fresh salt per hash');
  t.not(again.hash, h.hash);
  t.true(await verifyPassword('correct horse', h));
  t.false(await verifyPassword('correct horsf', h));
  t.false(await verifyPassword('', h));
});

test('a consolidated snapshot carries users and rules to a restored state; one without users reads as before', async (t) => {
  const { sm, users } = machine();
  const meta = {
    clusterId: 'c1',
    createdAt: '2026-01-01T00:00:00.000Z',
    groups: [[0, 1, 0]] as [number, number, number][],
  };
  const without = decodeConsolidated(Buffer.concat(await encodeConsolidated(sm.exportContent(), meta)), 'f');
  t.is(without.content.users, undefined);
  t.false(StateMachine.fromContent(without.content).hasUsers());
  users({ op: 'userAdd', user: 'amy', password: hashA, rules: [['', 'admin']] });
  const file = Buffer.concat(await encodeConsolidated(sm.exportContent(), meta));
  const back = StateMachine.fromContent(decodeConsolidated(file, 'f').content);
  t.deepEqual(back.listUsers(), [{ name: 'amy', rules: [['', 'admin']] }]);
  t.deepEqual(back.userPassword('amy'), hashA);
  // A crafted file whose users break the rules is refused whole.
  const bad = sm.exportContent();
  bad.users = [['amy', 'zz', 1, 1, 1, 'zz', []]];
  const crafted = decodeConsolidated(Buffer.concat(await encodeConsolidated(bad, meta)), 'f').content;
  t.throws(() => StateMachine.fromContent(crafted), { message: /user "amy"/ });
});

test('the login gate runs at most N checks at once, queues a bounded number and refuses the rest', async (t) => {
  const gate = new LoginGate(2, 1);
  let running = 0;
  let most = 0;
  const releases: (() => void)[] = [];
  const check = () =>
    new Promise<string>((resolve) => {
      running++;
      most = Math.max(most, running);
      releases.push(() => {
        running--;
        resolve('done');
      });
    });
  const a = gate.run(check, () => true);
  const b = gate.run(check, () => true);
  let queuedWanted = true;
  const queued = gate.run(check, () => queuedWanted);
  const refused = await t.throwsAsync(
    gate.run(check, () => true),
    { instanceOf: SegmemError },
  );
  t.is(refused?.code, 'UNAVAILABLE');
  t.is(running, 2);
  // The queued HELLO's connection closed meanwhile: it is dropped without running its check.
  queuedWanted = false;
  releases.shift()!();
  await t.throwsAsync(queued, { message: /closed while its login waited/ });
  t.is(await a, 'done');
  releases.shift()!();
  t.is(await b, 'done');
  t.is(most, 2);
  t.is(
    await gate.run(
      async () => 'again',
      () => true,
    ),
    'again',
    'slots come back',
  );
});
