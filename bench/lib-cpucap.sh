# lib-cpucap.sh — a CPU budget per server, standing in for "a machine of its own" when every
# replica of a benchmark runs on one small box: `cap_cpu NAME CPUS PID` puts PID (all its
# threads) in a cgroup of its own whose CFS quota is CPUS cores (0.5 = half a core), so two
# replicas capped at X bring 2X cores, as two machines would, while the proxy, the client and
# the shared services keep the rest. cgroup v1's `cpu` controller or cgroup v2 with `cpu`
# enabled; needs root. `uncap_all` removes the groups (call it after the capped processes are
# gone: a group with tasks in it cannot be removed).
CPUCAP_GROUPS=()

cpucap_root() { # -> CPUCAP_ROOT (where new groups are made) and CPUCAP_V (1 or 2)
  local v1 v2
  v1="$(awk '$3 == "cgroup" && $4 ~ /(^|,)cpu(,|$)/ {print $2; exit}' /proc/mounts)"
  if [ -n "$v1" ] && [ -w "$v1" ]; then CPUCAP_ROOT="$v1" CPUCAP_V=1; return 0; fi
  v2="$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)"
  if [ -n "$v2" ] && grep -qw cpu "$v2/cgroup.subtree_control" 2>/dev/null && [ -w "$v2" ]; then
    CPUCAP_ROOT="$v2" CPUCAP_V=2; return 0
  fi
  echo "$(basename "$0"): no writable cgroup cpu controller (cgroup v1 'cpu' or v2 with 'cpu' enabled; run as root)" >&2
  return 1
}

cap_cpu() { # NAME CPUS PID
  local dir period=100000 quota
  [ -n "${CPUCAP_ROOT:-}" ] || cpucap_root || exit 2
  quota="$(awk -v c="$2" -v p="$period" 'BEGIN{printf "%d", c * p}')"
  [ "$quota" -ge 1000 ] || { echo "$(basename "$0"): a CPU budget of $2 cores is too small (at least 0.01)" >&2; exit 2; }
  dir="$CPUCAP_ROOT/bench-$1-$$"
  mkdir -p "$dir"
  CPUCAP_GROUPS+=("$dir")
  if [ "$CPUCAP_V" = 1 ]; then
    echo "$period" >"$dir/cpu.cfs_period_us"
    echo "$quota" >"$dir/cpu.cfs_quota_us"
  else
    echo "$quota $period" >"$dir/cpu.max"
  fi
  echo "$3" >"$dir/cgroup.procs"
}

uncap_all() {
  local dir
  for dir in "${CPUCAP_GROUPS[@]}"; do rmdir "$dir" 2>/dev/null || true; done
}
