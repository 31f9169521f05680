// Tests of the native addon @segmem/native (mmap, mprotect, msync, hole punching, fault handler).
// The crash scenarios run in child processes (test/fixtures/native-crash.mjs).
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NativeBinding } from '@segmem/native';
import test, { type ExecutionContext } from 'ava';

const require = createRequire(import.meta.url);
const { native, loadError } = require('@segmem/native') as typeof import('@segmem/native');
const allowNoNative = Boolean(process.env.SEGMEM_ALLOW_NO_NATIVE);
const fixture = fileURLToPath(new URL('../../test/fixtures/native-crash.mjs', import.meta.url));
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

const dir = mkdtempSync(join(tmpdir(), 'segmem-native-test-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
let fileCounter = 0;
const tempFile = (name: string) => join(dir, `${name}-${++fileCounter}.seg`);

// Without the addon every test fails, unless SEGMEM_ALLOW_NO_NATIVE is set (then they are skipped).
const ntest = native || !allowNoNative ? test : test.skip;

function need(t: ExecutionContext): NativeBinding {
  if (!native) {
    t.fail(`@segmem/native did not load: ${loadError?.message}`);
    throw new Error('no native addon');
  }
  return native;
}

test('the addon loads (or SEGMEM_ALLOW_NO_NATIVE is set)', (t) => {
  if (!native && allowNoNative) {
    t.log(`native addon not loaded, allowed by SEGMEM_ALLOW_NO_NATIVE: ${loadError?.message}`);
    t.pass();
    return;
  }
  t.is(loadError, null);
  t.truthy(native);
  t.is(typeof native?.map, 'function');
});

function readFile(path: string, position: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const out = Buffer.alloc(length);
    readFully(fd, out, position);
    return out;
  } finally {
    closeSync(fd);
  }
}

function readFully(fd: number, out: Buffer, position: number) {
  let done = 0;
  while (done < out.length) {
    const n = readSync(fd, out, done, out.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
}

ntest('pageSize is a power of two of at least 4 KiB', (t) => {
  const n = need(t);
  const ps = n.pageSize();
  t.true(ps >= 4 * KiB);
  t.is(ps & (ps - 1), 0);
});

ntest('maps a sparse 4 GiB file; writes and reads at both ends; stays small on disk and in memory', (t) => {
  const n = need(t);
  const ps = n.pageSize();
  const file = tempFile('4g');
  const id = n.map(file, 4 * GiB);
  t.true(Number.isInteger(id) && id > 0);
  t.is(statSync(file).size, 4 * GiB);

  n.protect(id, 0, ps, 2);
  n.protect(id, 4 * GiB - ps, ps, 2);
  const head = n.buffer(id, 0, ps);
  const tail = n.buffer(id, 4 * GiB - ps, ps);
  t.is(head.length, ps);
  t.is(tail.length, ps);
  head.write('hello segmem', 0, 'latin1');
  tail.writeUInt32LE(0xdeadbeef, ps - 4);

  // A second view of the same bytes sees the writes (no copy).
  t.is(n.buffer(id, 0, 12).toString('latin1'), 'hello segmem');
  t.is(n.buffer(id, 4 * GiB - 4, 4).readUInt32LE(0), 0xdeadbeef);
  // One Buffer over the whole 4 GiB (buffer.constants.MAX_LENGTH on Node 20 is exactly 4 GiB).
  const all = n.buffer(id, 0, 4 * GiB);
  t.is(all.length, 4 * GiB);
  t.is(all[4 * GiB - 1], 0xde);
  t.is(all[1], 'e'.charCodeAt(0));

  n.sync(id, 0, 4 * GiB);
  t.is(readFile(file, 0, 12).toString('latin1'), 'hello segmem');
  t.is(readFile(file, 4 * GiB - 4, 4).readUInt32LE(0), 0xdeadbeef);

  const allocated = statSync(file).blocks * 512;
  t.true(allocated <= 1 * MiB, `file allocates ${allocated} bytes`);
  const rss = process.memoryUsage().rss;
  t.true(rss < 150 * MiB, `rss is ${rss} bytes`);
  t.true(n.close(id));
});

ntest('mappings larger than 4 GiB work at offsets above 2^32', (t) => {
  const n = need(t);
  const ps = n.pageSize();
  const file = tempFile('16g');
  const id = n.map(file, 16 * GiB);
  t.is(statSync(file).size, 16 * GiB);
  const off = 12 * GiB + 5 * ps;
  n.protect(id, off, ps, 2);
  const b = n.buffer(id, off, ps);
  b.writeDoubleLE(Math.PI, 8);
  t.is(n.buffer(id, off + 8, 8).readDoubleLE(0), Math.PI);
  n.sync(id, off, ps);
  t.is(readFile(file, off + 8, 8).readDoubleLE(0), Math.PI);
  t.throws(() => n.buffer(id, 16 * GiB - 1, 2), { instanceOf: RangeError });
  t.notThrows(() => n.buffer(id, 16 * GiB - 1, 1));
  n.label(id, 15 * GiB, 2 * ps, 'far');
  t.is(n.labelAt(id, 15 * GiB + ps), 'far');
  n.close(id);
});

ntest('read-only protection, sync, discard and close', (t) => {
  const n = need(t);
  const ps = n.pageSize();
  const file = tempFile('ops');
  const id = n.map(file, 8 * ps);
  n.protect(id, 0, 3 * ps, 2);
  const buf = n.buffer(id, 0, 3 * ps);
  buf.fill(7, 0, 2 * ps);
  buf.fill(9, 2 * ps, 3 * ps);

  // Read-only: existing Buffers still read.
  n.protect(id, 0, 3 * ps, 1);
  t.is(buf[0], 7);
  t.is(buf[2 * ps + 5], 9);
  t.is(n.buffer(id, ps, 4).readUInt32LE(0), 0x07070707);

  // sync writes back to the file.
  n.sync(id, 5, 2 * ps); // unaligned range: the covering pages are written
  t.deepEqual(readFile(file, 0, 2 * ps), Buffer.alloc(2 * ps, 7));
  t.deepEqual(readFile(file, 2 * ps, ps), Buffer.alloc(ps, 9));
  const blocksBefore = statSync(file).blocks;
  t.true(blocksBefore * 512 >= 3 * ps);

  // discard zeroes the pages, in memory and in the file, and frees the blocks; other pages stay.
  n.discard(id, 0, ps + 1); // rounded up to 2 pages
  t.is(buf[0], 0);
  t.is(buf[2 * ps - 1], 0);
  t.deepEqual(Buffer.from(buf.subarray(0, 2 * ps)), Buffer.alloc(2 * ps));
  t.is(buf[2 * ps], 9);
  t.deepEqual(readFile(file, 0, 2 * ps), Buffer.alloc(2 * ps));
  t.true(statSync(file).blocks < blocksBefore, 'discard frees file blocks');
  // Writable again after discard, and the page comes back zeroed-then-written.
  n.protect(id, 0, ps, 2);
  buf[3] = 3;
  t.is(n.buffer(id, 0, 4).readUInt32LE(0), 3 << 24);

  // Taking all access away; a zero-length buffer is an ordinary empty Buffer.
  n.protect(id, 0, 8 * ps, 0);
  t.is(n.buffer(id, 0, 0).length, 0);

  // Reopening the file as a second mapping shares the bytes (MAP_SHARED).
  const id2 = n.map(file, 8 * ps);
  t.not(id2, id);
  n.protect(id2, 2 * ps, ps, 1);
  t.is(n.buffer(id2, 2 * ps, 1)[0], 9);

  // close: returns true once, then false; the mapping is unusable; the address stays reported.
  t.true(n.close(id2, true));
  t.true(n.close(id));
  t.false(n.close(id));
  t.throws(() => n.buffer(id, 0, 1), { message: /closed/ });
  t.throws(() => n.protect(id, 0, ps, 2), { message: /closed/ });
  t.throws(() => n.sync(id, 0, ps), { message: /closed/ });
  t.throws(() => n.discard(id, 0, ps), { message: /closed/ });
  t.throws(() => n.label(id, 0, ps, 'x'), { message: /closed/ });
  t.is(typeof n.address(id), 'bigint');
  // close discarded the file's data (close(id2, true) kept it, then close(id) punched it).
  t.deepEqual(readFile(file, 2 * ps, ps), Buffer.alloc(ps));
  t.is(statSync(file).size, 8 * ps);
});

ntest('a second map of a file sees data synced by the first; close(id, true) keeps file data', (t) => {
  const n = need(t);
  const ps = n.pageSize();
  const file = tempFile('keep');
  const a = n.map(file, 4 * ps);
  n.protect(a, ps, ps, 2);
  n.buffer(a, ps, 5).write('kept!', 'latin1');
  n.sync(a, ps, ps);
  t.true(n.close(a, true));
  t.is(readFile(file, ps, 5).toString('latin1'), 'kept!');
  const b = n.map(file, 4 * ps);
  n.protect(b, 0, 4 * ps, 1);
  t.is(n.buffer(b, ps, 5).toString('latin1'), 'kept!');
  n.close(b);
});

ntest('argument validation', (t) => {
  const n = need(t);
  const ps = n.pageSize();
  const file = tempFile('args');
  const bad = n as unknown as Record<string, (...args: unknown[]) => unknown>;
  t.throws(() => n.map(file, 0), { instanceOf: RangeError });
  t.throws(() => n.map(file, ps + 1), { instanceOf: RangeError });
  t.throws(() => n.map(file, -ps), { instanceOf: RangeError });
  t.throws(() => n.map(file, 1.5 * ps), { instanceOf: RangeError });
  t.throws(() => bad.map!(file, String(ps)), { instanceOf: TypeError });
  t.throws(() => bad.map!(42, ps), { instanceOf: TypeError });
  const err = t.throws(() => n.map(join(dir, 'no-such-dir', 'x.seg'), ps));
  t.regex(err?.message ?? '', /open\(.*\) failed: No such file or directory/);
  t.is((err as Error & { code?: string }).code, 'ENOENT');

  const id = n.map(file, 4 * ps);
  t.throws(() => n.buffer(id, 4 * ps, 1), { instanceOf: RangeError });
  t.throws(() => n.buffer(id, 0, 4 * ps + 1), { instanceOf: RangeError });
  t.throws(() => n.buffer(id + 1000, 0, 1), { instanceOf: RangeError, message: /unknown mapping id/ });
  t.throws(() => n.buffer(0, 0, 1), { instanceOf: RangeError });
  t.throws(() => n.protect(id, 1, ps, 2), { instanceOf: RangeError, message: /page size/ });
  t.throws(() => n.protect(id, 0, 4 * ps + 1, 2), { instanceOf: RangeError }); // rounds up past the end
  t.throws(() => n.protect(id, 0, ps, 3 as 2), { instanceOf: RangeError });
  t.throws(() => n.discard(id, 1, ps), { instanceOf: RangeError });
  t.throws(() => n.sync(id, 4 * ps, 1), { instanceOf: RangeError });
  t.throws(() => n.label(id, 3 * ps, 2 * ps, 'x'), { instanceOf: RangeError });
  t.throws(() => bad.label!(id, 0, 1, 5), { instanceOf: TypeError });
  t.throws(() => bad.close!('1'), { instanceOf: TypeError });
  t.true(n.close(id));
});

ntest('labels: replace, narrowest wins, unlabel, truncation, dropped on close', (t) => {
  const n = need(t);
  const ps = n.pageSize();
  const id = n.map(tempFile('labels'), 16 * ps);
  t.is(n.labelAt(id, 0), null);
  n.label(id, 0, 8 * ps, 'big');
  n.label(id, ps, 100, 'small');
  t.is(n.labelAt(id, 0), 'big');
  t.is(n.labelAt(id, ps + 99), 'small');
  t.is(n.labelAt(id, ps + 100), 'big');
  t.is(n.labelAt(id, 8 * ps), null);
  n.label(id, ps, 200, 'small2'); // same (id, offset): replaces
  t.is(n.labelAt(id, ps + 150), 'small2');
  t.true(n.unlabel(id, ps));
  t.false(n.unlabel(id, ps));
  t.is(n.labelAt(id, ps + 150), 'big');
  const long = 'é'.repeat(200); // 400 bytes of UTF-8
  n.label(id, 10 * ps, 1, long);
  const kept = n.labelAt(id, 10 * ps);
  t.is(kept, 'é'.repeat(127)); // 254 bytes: a character is never cut in half
  t.is(n.maxLabelNameBytes, 255);
  t.is(n.maxLabels, 65536);
  n.label(id, 12 * ps, 0, 'empty');
  t.is(n.labelAt(id, 12 * ps), null); // an empty range covers nothing
  n.close(id);
  t.is(n.labelAt(id, 0), null);
});

ntest('labels: many entries, slots reused after unlabel', (t) => {
  const n = need(t);
  const ps = n.pageSize();
  const count = 20000;
  const id = n.map(tempFile('many'), 64 * ps);
  for (let i = 0; i < count; i++) n.label(id, i * 8, 8, `o${i}`);
  t.is(n.labelAt(id, 12345 * 8 + 3), 'o12345');
  for (let i = 0; i < count; i += 2) t.true(n.unlabel(id, i * 8));
  t.is(n.labelAt(id, 12344 * 8), null);
  t.is(n.labelAt(id, 12345 * 8), 'o12345');
  for (let i = 0; i < count; i += 2) n.label(id, i * 8, 8, `p${i}`);
  t.is(n.labelAt(id, 12344 * 8), 'p12344');
  n.close(id);
});

// The WebAssembly global is not in lib ES2023 nor in @types/node 20: declare the little used here.
interface WasmGlobal {
  instantiate(bytes: Uint8Array): Promise<{ instance: { exports: Record<string, unknown> } }>;
  RuntimeError: new (message?: string) => Error;
}
const wasm = (globalThis as unknown as { WebAssembly: WasmGlobal }).WebAssembly;

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the crash fixture; rejects if it has not exited within `deadlineMs` (and kills it). */
function runFixture(scenario: string, deadlineMs = 30_000): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [fixture, scenario, tempFile(`crash-${scenario}`)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`fixture ${scenario} did not exit within ${deadlineMs} ms; stderr: ${stderr}`));
    }, deadlineMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function announcedAddress(t: ExecutionContext, r: ChildResult): string {
  const line = r.stdout.split('\n').find((l) => l.startsWith('{"address"'));
  if (!line) {
    t.fail(`no address announced; stdout: ${r.stdout} stderr: ${r.stderr}`);
    return '0x?';
  }
  const address = (JSON.parse(line) as { address: string }).address;
  t.regex(address, /^0x[0-9a-f]+$/);
  return address;
}

function segmemLine(r: ChildResult): string {
  return r.stderr.split('\n').find((l) => l.startsWith('segmem: ')) ?? '';
}

ntest('crash: touching an unacquired labeled page aborts with the object name and address', async (t) => {
  need(t);
  const r = await runFixture('unacquired');
  t.is(r.signal, 'SIGABRT', `exit ${r.code}, stderr: ${r.stderr}`);
  const address = announcedAddress(t, r);
  const line = segmemLine(r);
  t.true(line.includes(`illegal access at address ${address},`), line);
  t.true(line.includes('"compteur"'), line);
  t.true(line.includes('not acquired'), line);
  t.true(line.includes(`segment offset ${2 * need(t).pageSize() + 100}`), line);
});

ntest('crash: writing to a read-only object says it is held read-only', async (t) => {
  need(t);
  const r = await runFixture('readonly');
  t.is(r.signal, 'SIGABRT', `exit ${r.code}, stderr: ${r.stderr}`);
  const address = announcedAddress(t, r);
  const line = segmemLine(r);
  t.true(line.includes(address), line);
  t.true(line.includes('object "compteur" is held read-only'), line);
  t.false(line.includes('not acquired'), line);
});

ntest('crash: touching a page outside any object says so', async (t) => {
  need(t);
  const r = await runFixture('unlabeled');
  t.is(r.signal, 'SIGABRT', `exit ${r.code}, stderr: ${r.stderr}`);
  const line = segmemLine(r);
  t.true(line.includes(announcedAddress(t, r)), line);
  t.true(line.includes('outside any object'), line);
});

ntest('crash: touching a Buffer after close says the segment was closed', async (t) => {
  need(t);
  const r = await runFixture('closed');
  t.is(r.signal, 'SIGABRT', `exit ${r.code}, stderr: ${r.stderr}`);
  const line = segmemLine(r);
  t.true(line.includes(announcedAddress(t, r)), line);
  t.true(line.includes('the segment was closed'), line);
});

ntest('crash: a fault on a worker thread is reported too', async (t) => {
  need(t);
  const r = await runFixture('worker');
  t.is(r.signal, 'SIGABRT', `exit ${r.code}, stderr: ${r.stderr}`);
  const line = segmemLine(r);
  t.true(line.includes(announcedAddress(t, r)), line);
  t.true(line.includes('"compteur"') && line.includes('not acquired'), line);
});

ntest('signals that are not faults in a mapping keep their default action', async (t) => {
  need(t);
  const [segv, bus] = await Promise.all([runFixture('kill-segv'), runFixture('kill-bus')]);
  t.is(segv.signal, 'SIGSEGV', `exit ${segv.code}, stderr: ${segv.stderr}`);
  t.is(bus.signal, 'SIGBUS', `exit ${bus.code}, stderr: ${bus.stderr}`);
  t.is(segmemLine(segv), '');
  t.is(segmemLine(bus), '');
});

ntest(
  'WebAssembly out-of-bounds traps still throw RuntimeError with the handler installed (child)',
  async (t) => {
    need(t);
    const r = await runFixture('wasm');
    t.is(r.code, 0, `signal ${r.signal}, stderr: ${r.stderr}`);
    const result = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as {
      trapped?: boolean;
      name?: string;
    };
    t.deepEqual(result, { trapped: true, name: 'RuntimeError', message: 'memory access out of bounds' });
  },
);

ntest('installFaultHandler is idempotent and WebAssembly traps still work in this process', async (t) => {
  const n = need(t);
  const first = n.installFaultHandler();
  t.is(typeof first, 'boolean');
  t.false(n.installFaultHandler());
  t.false(n.installFaultHandler());
  // (module (memory 1) (func (export "load") (param i32) (result i32) local.get 0 i32.load))
  const bytes = new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f, 0x03,
    0x02, 0x01, 0x00, 0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x08, 0x01, 0x04, 0x6c, 0x6f, 0x61, 0x64, 0x00,
    0x00, 0x0a, 0x09, 0x01, 0x07, 0x00, 0x20, 0x00, 0x28, 0x02, 0x00, 0x0b,
  ]);
  const { instance } = await wasm.instantiate(bytes);
  const load = instance.exports.load as (addr: number) => number;
  t.is(load(0), 0);
  for (let i = 0; i < 3; i++) {
    t.throws(() => load(1 << 20), { instanceOf: wasm.RuntimeError, message: /out of bounds/ });
  }
  // Our mappings still work with the handler installed.
  const ps = n.pageSize();
  const id = n.map(tempFile('after-install'), 2 * ps);
  n.protect(id, 0, ps, 2);
  n.buffer(id, 0, 1)[0] = 5;
  t.is(n.buffer(id, 0, 1)[0], 5);
  n.close(id);
});
