# Sourced by the PostgreSQL scripts: `bin` (Debian's server binaries, newest
# version), and `run CMD` / `owner`: PostgreSQL refuses to run as root, so as
# root commands run as the 'postgres' user.
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "PostgreSQL server binaries not found: run scripts/install-deps.sh" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  run() { su postgres -s /bin/sh -c "$*"; }
  owner=postgres
else
  run() { sh -c "$*"; }
  owner=$(id -un)
fi
