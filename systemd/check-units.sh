#!/bin/sh
# `make check-units`: `systemd-analyze verify` and `security` on both units, from any clone. verify
# checks that ExecStart= is executable, and the units expect the checkout at /opt/imagend (docs/running.md,
# "Running under systemd"): so it runs in a throwaway root that holds the units unchanged, this
# host's own units (sysinit.target and the others ours order against) and the venv's imagend at the
# units' ExecStart path. tests/unit/test_systemd_units.py does the same on every run.
set -eu
venv=${VENV:-.venv}
command -v systemd-analyze >/dev/null || { echo "check-units: systemd-analyze is not installed (Debian: apt install systemd)" >&2; exit 2; }
[ -x "$venv/bin/imagend" ] || { echo "check-units: no $venv/bin/imagend: run make install first" >&2; exit 2; }
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' systemd/imagend.service)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root$(dirname "$exec_start")"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp systemd/imagend.service systemd/imagend@.service "$root/etc/systemd/system/"
cp "$venv/bin/imagend" "$root$exec_start"
echo "systemd-analyze verify (ExecStart=$exec_start, in a throwaway root):"
# verify exits 0 on a setting it ignores ("Failed to parse …, ignoring"): any output is a failure.
if ! out=$(systemd-analyze verify --root="$root" imagend.service imagend@0.service 2>&1) || [ -n "$out" ]; then
    echo "$out" >&2
    exit 1
fi
echo "  passes on imagend.service and imagend@.service"
for unit in systemd/imagend.service systemd/imagend@.service; do
    systemd-analyze security --offline=yes "$unit" | tail -n 1
done
