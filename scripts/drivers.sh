#!/usr/bin/env bash
# Installs the driver matrix (tests/drivers/) from the registries into
# ${DBCONN_CACHE:-~/.cache/dbconn}/drivers, idempotently: each kind is redone only when its pinned
# versions or its program changed (a stamp holds their hash).
#   node/    node-postgres and Postgres.js (npm ci of tests/drivers/node/package-lock.json)
#   python/  a venv with psycopg[binary], asyncpg, SQLAlchemy, Django and dj-database-url
#            (tests/drivers/python/requirements.txt; the last three for tests/frameworks.rs)
#   go/      the pgx program, built (modules from the Go module proxy, tests/drivers/go/go.sum)
#   java/    pgJDBC from Maven Central and the compiled scenario
#   spring/  a Spring Boot app (tests/frameworks/spring) from Maven Central, as one jar
#   prisma/  Prisma ORM 7 with @prisma/adapter-pg (tests/frameworks/prisma), client generated
# (Rails comes from Debian's packages: scripts/setup.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."

PGJDBC_VERSION=42.7.14
src=tests/drivers
out="${DBCONN_CACHE:-$HOME/.cache/dbconn}/drivers"
mkdir -p "$out"
log() { echo "[drivers] $*" >&2; }

# fresh KIND FILE...: true when KIND's stamp differs from the hash of FILE... (and the version).
fresh() {
  local kind=$1; shift
  local sum; sum=$( (echo "$PGJDBC_VERSION"; cat "$@") | sha256sum | cut -d' ' -f1)
  [ "$(cat "$out/$kind/.stamp" 2>/dev/null)" = "$sum" ] && return 1
  rm -rf "$out/$kind" && mkdir -p "$out/$kind" && echo "$sum" > "$out/$kind/.stamp.new"
}
done_kind() { mv "$out/$1/.stamp.new" "$out/$1/.stamp"; }

if fresh node $src/node/package.json $src/node/package-lock.json; then
  log "node-postgres and Postgres.js from npm"
  cp $src/node/package.json $src/node/package-lock.json "$out/node/"
  (cd "$out/node" && npm ci --silent --no-audit --no-fund >&2)
  done_kind node
fi

if fresh python $src/python/requirements.txt; then
  log "psycopg, asyncpg, SQLAlchemy, Django and dj-database-url from PyPI"
  python3 -m venv "$out/python"
  "$out/python/bin/python" -m pip install -q --only-binary=:all: -r $src/python/requirements.txt >&2
  done_kind python
fi

if fresh go $src/go/go.mod $src/go/go.sum $src/go/main.go; then
  log "pgx from the Go module proxy"
  (cd $src/go && GOFLAGS=-mod=readonly go build -o "$out/go/pgx-driver" .)
  done_kind go
fi

if fresh java $src/java/Driver.java; then
  log "pgJDBC $PGJDBC_VERSION from Maven Central"
  mvn -q -B dependency:copy -Dartifact="org.postgresql:postgresql:$PGJDBC_VERSION" \
    -DoutputDirectory="$out/java" -Dmdep.stripVersion=true >&2
  javac -d "$out/java" -cp "$out/java/postgresql.jar" $src/java/Driver.java
  done_kind java
fi

spring=tests/frameworks/spring
if fresh spring $spring/pom.xml $spring/src/main/java/dbconn/spring/App.java $spring/src/main/resources/application.properties; then
  log "Spring Boot (spring-boot-starter-jdbc) and pgJDBC $PGJDBC_VERSION from Maven Central"
  mvn -q -B -f $spring/pom.xml package -Dpostgresql.version="$PGJDBC_VERSION" \
    -Ddbconn.build="$out/spring/build" >&2
  mv "$out/spring/build/app.jar" "$out/spring/app.jar" && rm -rf "$out/spring/build"
  done_kind spring
fi

prisma=tests/frameworks/prisma
if fresh prisma $prisma/package.json $prisma/package-lock.json $prisma/schema.prisma $prisma/prisma.config.ts; then
  log "Prisma ORM and @prisma/adapter-pg from npm"
  cp $prisma/package.json $prisma/package-lock.json $prisma/schema.prisma $prisma/prisma.config.ts "$out/prisma/"
  # --ignore-scripts: @prisma/engines' postinstall would fetch the schema engine from
  # binaries.prisma.sh, which only migrations use. `prisma generate` checks that the binary
  # exists without running it, so a stand-in is named.
  (cd "$out/prisma" && npm ci --ignore-scripts --silent --no-audit --no-fund >&2 \
    && PRISMA_SCHEMA_ENGINE_BINARY=/bin/false PRISMA_HIDE_UPDATE_MESSAGE=1 CHECKPOINT_DISABLE=1 \
       ./node_modules/.bin/prisma generate >&2)
  done_kind prisma
fi
