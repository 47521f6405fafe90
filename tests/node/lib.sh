# Sourced by tests/node/sweep.sh and tests/node/restore.sh (not run).

# Kill what runs from DIR (its command line names a path under DIR, or its
# root directory is under DIR: a container), then unmount everything under
# DIR, deepest first (the kubelet bind-mounts its root directory onto itself).
free_dir() { # DIR WHO
  local d=$1 who=$2 p killed=0
  for p in $(pgrep -f -- "$d/"); do
    [ "$p" = "$$" ] || [ "$p" = "$PPID" ] || { kill -9 "$p" 2>/dev/null && killed=$((killed + 1)); }
  done
  for p in /proc/[0-9]*; do
    case $(readlink "$p/root" 2>/dev/null) in "$d"/*) kill -9 "${p#/proc/}" 2>/dev/null && killed=$((killed + 1)) ;; esac
  done
  [ "$killed" = 0 ] || { echo "$who: killed $killed processes of $d" >&2; sleep 0.3; }
  local mounts=0 m
  for _ in 1 2 3; do
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
      mounts=$((mounts + 1))
    done < <(awk -v d="$d/" 'index($2, d) == 1 || $2 == substr(d, 1, length(d) - 1) {print $2}' /proc/self/mounts | sort -r)
  done
  [ "$mounts" = 0 ] || echo "$who: unmounted $mounts mounts under $d" >&2
}
