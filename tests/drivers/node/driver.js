// The driver-matrix scenario (see ../README.md) with node-postgres (`pg`) or Postgres.js
// (`postgres`): node driver.js pg|postgres
'use strict';

const lib = process.argv[2];
const clients = Number(process.env.DRIVER_CLIENTS || 6);
const iterations = Number(process.env.DRIVER_ITERATIONS || 40);
const tag = process.env.DRIVER_TAG || lib;
let checks = 0;

function expect(what, got, want) {
  if (String(got) !== String(want)) throw new Error(`${what}: got ${got}, want ${want}`);
  checks++;
}

async function nodePostgres(id) {
  const pg = require('pg');
  const c = new pg.Client({ ssl: false });
  await c.connect();
  try {
    await c.query(`SET application_name = '${id}'`);
    for (let i = 0; i < iterations; i++) {
      const r = await c.query({
        name: 'doubled',
        text: "SELECT $1::int * 2 AS doubled, current_setting('application_name') AS app",
        values: [i],
      });
      expect('doubled', r.rows[0].doubled, 2 * i);
      expect('application_name', r.rows[0].app, id);
      await c.query('BEGIN');
      await c.query({ name: 'insert', text: 'INSERT INTO driver_rows (client, n) VALUES ($1, $2)', values: [id, i] });
      const n = await c.query({ name: 'count', text: 'SELECT count(*)::int AS n FROM driver_rows WHERE client = $1', values: [id] });
      await c.query('COMMIT');
      expect('rows', n.rows[0].n, i + 1);
      try {
        await c.query({ name: 'divide', text: 'SELECT 1 / ($1::int - $1::int) AS x', values: [i] });
        throw new Error('division by zero succeeded');
      } catch (e) {
        expect('division by zero SQLSTATE', e.code, '22012');
      }
    }
  } finally {
    await c.end();
  }
}

async function postgresJs(id) {
  const postgres = require('postgres');
  const sql = postgres({ max: 1, prepare: true, ssl: false, onnotice: () => {} });
  try {
    await sql.unsafe(`SET application_name = '${id}'`);
    for (let i = 0; i < iterations; i++) {
      const [r] = await sql`SELECT ${i}::int * 2 AS doubled, current_setting('application_name') AS app`;
      expect('doubled', r.doubled, 2 * i);
      expect('application_name', r.app, id);
      const [n] = await sql.begin(async (tx) => {
        await tx`INSERT INTO driver_rows (client, n) VALUES (${id}, ${i})`;
        return tx`SELECT count(*)::int AS n FROM driver_rows WHERE client = ${id}`;
      });
      expect('rows', n.n, i + 1);
      try {
        await sql`SELECT 1 / (${i}::int - ${i}::int) AS x`;
        throw new Error('division by zero succeeded');
      } catch (e) {
        expect('division by zero SQLSTATE', e.code, '22012');
      }
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
}

const run = { pg: nodePostgres, postgres: postgresJs }[lib];
if (!run) {
  console.error('usage: node driver.js pg|postgres');
  process.exit(2);
}
Promise.all(Array.from({ length: clients }, (_, c) => run(`${tag}-${c}`)))
  .then(() => console.log(`checks=${checks}`))
  .catch((e) => {
    console.error(`${lib}: ${e.stack || e}`);
    process.exit(1);
  });
