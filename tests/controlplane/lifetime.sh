# Sourced by tests/controlplane/up.sh and tests/node/up.sh (not run): keep
# running after READY until SIGINT/SIGTERM, or, with lifetime=stdin, until
# standard input closes (so a test process that dies takes us with it).
run_until_stopped() { # stdin|signal
  if [ "$1" = stdin ]; then
    exec 3<&0
    cat <&3 >/dev/null &
    wait $! || true
  else
    while :; do sleep 3600 & wait $! || true; done
  fi
}
