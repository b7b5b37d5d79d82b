#!/bin/sh
# aigw's commands as the container's command: `serve`, `worker --queues …`, `bench …`, or any
# other aigw subcommand; `flower` runs Celery's monitor against AIGW_BROKER_URL.
set -eu
case "${1:-serve}" in
  flower)
    shift
    exec celery --broker="${AIGW_BROKER_URL:?AIGW_BROKER_URL is not set}" flower "$@"
    ;;
  *)
    exec aigw "$@"
    ;;
esac
