#!/usr/bin/env bash
# Install or upgrade fmc on a Linux machine: a venv under a prefix, the systemd unit, the example
# configuration. Run it again to upgrade: the spool, the configuration and the secrets are never
# touched. Reference: docs/deploy.md.
#
#   deploy/install.sh [--from PATH] [--prefix DIR] [--role agent|central] [--python PY] [--no-systemd]
#
#   --from PATH    what to install: a source tree of fmc (default: the tree this script is in) or a wheel
#   --prefix DIR   where the venv goes: DIR/venv (default /opt/fmc)
#   --role ROLE    agent (a factory gateway, default): fmc without extras, the agent only;
#                  central: fmc[central], the API (fmc api) and Grafana push
#   --python PY    the Python 3.11+ interpreter the venv is made from (default python3)
#   --no-systemd   no user, no unit: config and state go under DIR/etc and DIR/var
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
from=""
prefix="/opt/fmc"
role="agent"
python="python3"
systemd=1

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --from) [ $# -ge 2 ] || die "--from needs a path"; from="$2"; shift 2 ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix="$2"; shift 2 ;;
    --role) [ $# -ge 2 ] || die "--role needs agent or central"; role="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python="$2"; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

# the agent role installs no extra: a gateway gets no web server, no API framework, no Grafana client
case "$role" in
  agent) unit="fmc-agent.service"; config_name="agent.toml"; env_name="agent.env"; extra="" ;;
  central) unit="fmc-api.service"; config_name="central.toml"; env_name="central.env"; extra="central" ;;
  *) die "--role must be agent or central (got '$role')" ;;
esac

[ -n "$from" ] || from="$(cd "$here/.." && pwd)"
if [ -d "$from" ]; then
  [ -f "$from/pyproject.toml" ] || die "--from $from: no pyproject.toml there; give fmc's source tree or a wheel"
  from="$(cd "$from" && pwd)"
elif [ -f "$from" ]; then
  case "$from" in *.whl) ;; *) die "--from $from: not a directory and not a .whl file" ;; esac
  from="$(cd "$(dirname "$from")" && pwd)/$(basename "$from")"
else
  die "--from $from: no such file or directory"
fi

case "$prefix" in /*) ;; *) prefix="$(pwd)/$prefix" ;; esac
prefix="${prefix%/}"
case "$prefix" in
  *[[:space:]\"\'\\%]*) die "--prefix '$prefix': no spaces, quotes, backslashes or % (the unit's ExecStart cannot take them)" ;;
esac
venv="$prefix/venv"

if [ "$systemd" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "installing the systemd unit needs root: run with sudo, or pass --no-systemd"
  command -v systemctl >/dev/null 2>&1 || die "systemctl not found: pass --no-systemd on a machine without systemd"
  # fixed by the unit's ConfigurationDirectory= and StateDirectory=
  config_dir="/etc/fmc"
  state_dir="/var/lib/fmc"
else
  config_dir="$prefix/etc"
  state_dir="$prefix/var"
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$python is missing or older than Python 3.11; pass --python python3.11 (or newer)"

echo "installing fmc ($role) from $from into $venv"

# 1. the user the service runs as (systemd only: a --no-systemd install runs as whoever starts it)
if [ "$systemd" = 1 ] && ! id fmc >/dev/null 2>&1; then
  useradd --system --user-group --home-dir "$state_dir" --no-create-home --shell /usr/sbin/nologin fmc
  echo "  created system user fmc"
fi

# 2. the venv: made once, kept on upgrade (pip replaces fmc and its dependencies inside it)
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$prefix"
  "$python" -m venv "$venv" || die "cannot make a venv with $python; on Debian: apt-get install python3-venv"
  echo "  created venv $venv"
fi

# 3. fmc itself, from a wheel. A source tree is copied and built into one first, so building never
# writes into it (it may be read-only, or someone's working copy).
build=""
cleanup() { [ -z "$build" ] || rm -rf "$build"; }
trap cleanup EXIT
wheel="$from"
if [ -d "$from" ]; then
  build="$(mktemp -d)"
  mkdir "$build/src"
  tar -C "$from" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.egg-info' \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.hypothesis \
      --exclude='*.db' --exclude='*.db-wal' --exclude='*.db-shm' -cf - . | tar -C "$build/src" -xf -
  "$venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$build/dist" "$build/src"
  wheel="$(echo "$build"/dist/fmc-*.whl)"
fi
# A new build often keeps the version of the one installed (every wheel so far is fmc-0.1.0): pip would
# answer "already installed" and keep the old code. So fmc itself is always reinstalled, alone, then pip
# adds what its dependencies need (missing, or older than its floors) and leaves the rest as it is.
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -m pip install --quiet "$wheel${extra:+[$extra]}"
version="$("$venv/bin/fmc" --version)"
echo "  installed $version${extra:+ with the $extra extra}"

# 4. configuration and state: created when missing, never overwritten
mkdir -p "$config_dir" "$state_dir"
examples="$here/examples"
sed_escape() { printf '%s' "$1" | sed 's/[#&\\]/\\&/g'; }
copy_once() {  # copy_once SRC DEST MODE: only when DEST does not exist yet; false when it was kept
  if [ -e "$2" ]; then
    echo "  kept $2"
    return 1
  fi
  if [ ! -f "$1" ]; then
    echo "  no example $1 to copy: write $2 yourself"
    return 1
  fi
  install -m "$3" "$1" "$2"
  echo "  wrote $2 (an example: edit it)"
}
if copy_once "$examples/$config_name" "$config_dir/$config_name" 0644; then
  # the state goes where this install keeps it: the agent's example spools to /var/lib/fmc (a
  # --no-systemd install keeps it under the prefix); the central example's keys file and sums cache
  # sit next to the config, which the unit makes read-only
  sed -i -e "s#/var/lib/fmc/#$(sed_escape "$state_dir")/#g" \
         -e "s#^keys_file = \"keys.db\"#keys_file = \"$(sed_escape "$state_dir")/keys.db\"#" \
         -e "s#^path = \"sums-cache.db\"#path = \"$(sed_escape "$state_dir")/sums-cache.db\"#" "$config_dir/$config_name"
fi
if [ "$role" = agent ]; then
  copy_once "$examples/inventory.csv" "$config_dir/inventory.csv" 0644 || true
else
  copy_once "$examples/enterprises.csv" "$config_dir/enterprises.csv" 0644 || true
fi
if [ ! -e "$config_dir/$env_name" ]; then
  (umask 077 && cat > "$config_dir/$env_name" <<EOF
# Secrets for fmc ($role), one VAR=value per line, referenced as \${VAR} in $config_name.
# Readable by root only; systemd reads it before starting fmc. Never put secrets in $config_name.
EOF
  )
  echo "  wrote $config_dir/$env_name (mode 0600: put the secrets here)"
else
  echo "  kept $config_dir/$env_name"
fi
if [ "$systemd" = 1 ]; then
  chown fmc:fmc "$state_dir"
  chmod 0750 "$state_dir"
fi

# 5. the unit, with this prefix in ExecStart
rendered="$prefix/share/systemd/$unit"
mkdir -p "$(dirname "$rendered")"
sed "s#/opt/fmc/#$(sed_escape "$prefix")/#g" "$here/systemd/$unit" > "$rendered"
if [ "$systemd" = 1 ]; then
  install -m 0644 "$rendered" "/etc/systemd/system/$unit"
  systemctl daemon-reload
  if systemctl is-active --quiet "$unit"; then
    systemctl restart "$unit"  # an upgrade: the agent flushes its spool on SIGTERM and resumes after
    echo "  restarted $unit"
  fi
  echo "  installed /etc/systemd/system/$unit"
else
  echo "  unit for this prefix (not installed): $rendered"
fi

echo
echo "done: $version"
echo "next steps:"
if [ "$role" = agent ]; then
  echo "  1. edit $config_dir/agent.toml (enterprise, sources, InfluxDB) and $config_dir/inventory.csv (设备台账)"
  echo "  2. put the secrets it names (\${FMC_MQTT_PASSWORD}, …) into $config_dir/$env_name"
  if [ "$systemd" = 1 ]; then
    echo "  3. check the file and every connection as the service will run:"
    echo "     systemd-run --pipe --wait -p User=fmc -p EnvironmentFile=$config_dir/$env_name -p StateDirectory=fmc \\"
    echo "       $venv/bin/fmc check -c $config_dir/agent.toml"
    echo "  4. start it at boot: systemctl enable --now $unit; follow it: journalctl -u $unit -f"
  else
    echo "  3. check the file and every connection: set -a; . $config_dir/$env_name; set +a; $venv/bin/fmc check -c $config_dir/agent.toml"
    echo "  4. run it: $venv/bin/fmc run -c $config_dir/agent.toml (spool under $state_dir)"
  fi
else
  echo "  1. edit $config_dir/central.toml (store, registry, api: keys_file under $state_dir) and $config_dir/enterprises.csv"
  echo "  2. put the secrets it names (\${INFLUX_TOKEN}, …) into $config_dir/$env_name"
  if [ "$systemd" = 1 ]; then
    echo "  3. give each bureau its API key (shown once), as the service will run:"
    echo "     systemd-run --pipe --wait -p User=fmc -p EnvironmentFile=$config_dir/$env_name -p StateDirectory=fmc \\"
    echo "       $venv/bin/fmc keys create -c $config_dir/central.toml --scope region:3306 --name …"
    echo "  4. start it at boot: systemctl enable --now $unit; follow it: journalctl -u $unit -f"
  else
    echo "  3. give each bureau its API key (shown once): set -a; . $config_dir/$env_name; set +a; $venv/bin/fmc keys create -c $config_dir/central.toml --scope region:3306 --name …"
    echo "  4. run it: $venv/bin/fmc api -c $config_dir/central.toml"
  fi
  echo "  then the dashboards into Grafana: $venv/bin/fmc grafana push --url … (docs/deploy.md)"
fi
