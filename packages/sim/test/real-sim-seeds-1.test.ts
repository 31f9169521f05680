/**
 * Seeds 1..100 of the simulation of the shipped code, without broken variants: every checker passes,
 * faults and liveness included. CI runs 200 seeds over two files, which ava runs in two processes at once.
 */
import test from 'ava';
import { checkSeeds, SEEDS_PER_TEST } from './seeds.js';

const FROM = 1;
const TO = 100;

for (let from = FROM; from <= TO; from += SEEDS_PER_TEST) {
  const to = Math.min(TO, from + SEEDS_PER_TEST - 1);
  // Serial: the seeds of one file share one process, and each test's time is then its own.
  test.serial(`real members and real clients: seeds ${from}..${to} pass every checker`, (t) =>
    checkSeeds(t, from, to),
  );
}
