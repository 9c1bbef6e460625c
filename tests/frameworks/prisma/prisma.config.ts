// Migrations (prisma migrate) would run against the Secret's direct URL. In Prisma 7 that
// path needs the native schema-engine binary, which npm does not ship: only `prisma generate`
// is used here (with PRISMA_SCHEMA_ENGINE_BINARY pointing at a stand-in so the CLI does not
// try to download it).
import { defineConfig } from 'prisma/config'

export default defineConfig({
  schema: 'schema.prisma',
  datasource: { url: process.env.DIRECT_URL },
})
