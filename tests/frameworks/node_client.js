// node-postgres, configured only from the connection Secret's keys: DATABASE_URL (uri, through
// the sidecar) and DIRECT_URL (direct-uri: verify-full with the CA file where it is mounted,
// which node-postgres reads from sslrootcert). Prints `<name> <current_user> <ssl>` per URL.
const { Client } = require('pg');

const QUERY = "SELECT current_user AS u, coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false) AS s";

async function check(name, url) {
  const client = new Client({ connectionString: url });
  await client.connect();
  const { rows } = await client.query(QUERY);
  await client.end();
  console.log(`${name} ${rows[0].u} ${rows[0].s}`);
}

(async () => {
  await check('node-postgres', process.env.DATABASE_URL);
  await check('node-postgres-direct', process.env.DIRECT_URL);
})().catch((e) => { console.error(e); process.exit(1); });
