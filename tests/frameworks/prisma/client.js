// Prisma ORM 7 (the Rust-free client with @prisma/adapter-pg, i.e. node-postgres underneath),
// configured only from the connection Secret's keys: DATABASE_URL (uri, through the sidecar)
// and, when set, DIRECT_URL (direct-uri: verify-full with the CA file where it is mounted,
// which node-postgres reads from sslrootcert). Prints `<name> <current_user> <ssl>` per URL.
const { PrismaClient } = require('@prisma/client');
const { PrismaPg } = require('@prisma/adapter-pg');

async function check(name, url) {
  const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url }) });
  try {
    const rows = await prisma.$queryRaw`SELECT current_user AS u, coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false) AS s`;
    console.log(`${name} ${rows[0].u} ${rows[0].s}`);
  } finally {
    await prisma.$disconnect();
  }
}

(async () => {
  if (!process.env.DATABASE_URL) throw new Error('DATABASE_URL is not set');
  await check('prisma', process.env.DATABASE_URL);
  if (process.env.DIRECT_URL) await check('prisma-direct', process.env.DIRECT_URL);
})().catch((e) => { console.error(e); process.exit(1); });
