#!/usr/bin/env bash
# Installs what the demo and the test suite need from Debian when it is missing: Java 17 and Maven (to fetch
# and run Apache Kafka), PostgreSQL's server binaries (a throwaway cluster per test run) and Chromium (the
# web page test). Does nothing when all are there; needs root to install (CI runs as root).
# Usage: install-system-deps.sh [demo|test]   (demo needs only Java and Maven)
set -euo pipefail
what=${1:-test}
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
if [ "$what" = test ]; then
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then need+=(postgresql); fi
command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
  echo "installing from Debian: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
