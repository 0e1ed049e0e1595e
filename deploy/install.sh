#!/usr/bin/env bash
# Install or upgrade fmc on a Linux machine: a venv under a prefix, the systemd unit, the example
# configuration. Run it again to upgrade: the spool, the configuration and the secrets are never
# touched, and the agent is restarted only when the new version's fmc check passes its configuration
# (else the script exits 1, the running agent left as it is). Reference: docs/deploy.md.
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

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
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
config="$config_dir/$config_name"
upgrade=0  # a configuration there already: this install upgrades one the agent may be running on
[ ! -e "$config" ] || upgrade=1
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
if copy_once "$examples/$config_name" "$config" 0644; then
  # the state goes where this install keeps it: the agent's example spools to /var/lib/fmc (a
  # --no-systemd install keeps it under the prefix); the central example's keys file and sums cache
  # sit next to the config, which the unit makes read-only
  sed -i -e "s#/var/lib/fmc/#$(sed_escape "$state_dir")/#g" \
         -e "s#^keys_file = \"keys.db\"#keys_file = \"$(sed_escape "$state_dir")/keys.db\"#" \
         -e "s#^path = \"sums-cache.db\"#path = \"$(sed_escape "$state_dir")/sums-cache.db\"#" "$config"
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

# 5. an upgrade of the agent: does the new fmc take the configuration it will start with? A setting it
# refuses would stop the restarted unit (exit 2), a spool it may not write make it restart for ever:
# the gateway would collect nothing. fmc check runs as the service would (its user and secrets); when it
# refuses a setting or the spool, the running agent is left as it is, on the code it started with, and
# the script exits 1; connections that fail (exit 1 too) are reported and the agent restarted.
check_command() {
  if [ "$systemd" = 1 ]; then
    echo "systemd-run --pipe --wait -p User=fmc -p EnvironmentFile=$config_dir/$env_name -p StateDirectory=fmc \\"
    echo "       $venv/bin/fmc check -c $config"
  else
    echo "set -a; . $config_dir/$env_name; set +a; $venv/bin/fmc check -c $config"
  fi
}
check_upgrade() {  # true when the new fmc passes its check of the configuration; else says what to do
  local output status=0
  if [ "$systemd" = 1 ]; then
    output="$(systemd-run --quiet --collect --pipe --wait -p User=fmc -p Group=fmc \
      -p "EnvironmentFile=-$config_dir/$env_name" -p StateDirectory=fmc -p "WorkingDirectory=$state_dir" \
      "$venv/bin/fmc" check -c "$config" 2>&1)" || status=$?
  else
    output="$(set -a; [ ! -f "$config_dir/$env_name" ] || . "$config_dir/$env_name"; set +a
              "$venv/bin/fmc" check -c "$config" 2>&1)" || status=$?
  fi
  [ "$status" != 0 ] || return 0
  # only what stops the new agent blocks the restart: a refused setting (exit 2) or a spool it may not
  # write; a broker, machine or store away (exit 1 too) is routine on a factory floor and ridden out
  if [ "$status" != 2 ] && ! printf '%s\n' "$output" | grep -Eq '^[[:space:]]*spool[[:space:]]+FAIL'; then
    {
      echo
      echo "install.sh: fmc check -c $config with the new fmc found connections failing (exit $status):"
      printf '%s\n' "$output" | sed 's/^/    /'
      echo "The agent rides these out (the spool keeps the points while a store or broker is away): restarting."
      echo
    } >&2
    return 0
  fi
  {
    echo
    if [ "$status" = 2 ]; then
      echo "install.sh: the new fmc refuses $config (fmc check -c $config, exit 2):"
    else
      echo "install.sh: fmc check -c $config failed with the new fmc (exit $status):"
    fi
    printf '%s\n' "$output" | sed 's/^/    /'
    echo
    if [ "$systemd" = 1 ]; then
      echo "$unit was not restarted: the agent keeps running the version it started with, its spool collecting."
      echo "The new version is installed, though: the agent's next start (a reboot, a failure) runs it. Now:"
    else
      echo "The new version is installed: do not restart fmc run on it before the check passes. Now:"
    fi
    echo "  - fix what the check names (docs/configuration.md) and check again:"
    echo "      $(check_command)"
    [ "$systemd" = 0 ] || echo "    then restart the agent: systemctl restart $unit (or run this script again)"
    echo "  - or go back: deploy/install.sh --from the wheel of the version installed before (docs/deploy.md, Upgrade)"
  } >&2
  return 1
}

# 6. the unit, with this prefix in ExecStart
rendered="$prefix/share/systemd/$unit"
mkdir -p "$(dirname "$rendered")"
sed "s#/opt/fmc/#$(sed_escape "$prefix")/#g" "$here/systemd/$unit" > "$rendered"
if [ "$systemd" = 1 ]; then
  install -m 0644 "$rendered" "/etc/systemd/system/$unit"
  systemctl daemon-reload
  echo "  installed /etc/systemd/system/$unit"
  if systemctl is-active --quiet "$unit"; then
    if [ "$role" = agent ]; then
      check_upgrade || exit 1
    fi
    systemctl restart "$unit"  # an upgrade: the agent flushes its spool on SIGTERM and resumes after
    echo "  restarted $unit"
  fi
else
  echo "  unit for this prefix (not installed): $rendered"
  # nothing to restart here, but the fmc run started by hand, or by another supervisor, would fail alike
  if [ "$role" = agent ] && [ "$upgrade" = 1 ]; then
    check_upgrade || exit 1
  fi
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
