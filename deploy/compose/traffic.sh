#!/bin/sh
# Traffic for the compose demo (POSIX sh + curl). Each round creates a tenant
# subaccount in the simulator, waits until usagebreaker has registered its
# Usage Triggers on it, then adds SMS usage step by step until the simulator
# refuses it (409: the account is suspended), and says how it went.
#
# Environment: SIM_URL, ADMIN_URL (usagebreaker's admin listener),
# ADMIN_TOKEN_FILE (to ask for a reconcile now), TWILIO_ACCOUNT_SID and
# TWILIO_AUTH_TOKEN (the simulator's parent), ROUNDS (0: forever),
# STEP_SECONDS, ROUND_PAUSE_SECONDS, TRIP_TIMEOUT_SECONDS.
set -eu

SIM_URL=${SIM_URL:-http://sim:8089}
ADMIN_URL=${ADMIN_URL:-http://sim:9111}
ADMIN_TOKEN_FILE=${ADMIN_TOKEN_FILE:-/run/secrets/usagebreaker-admin-token}
PARENT_SID=${TWILIO_ACCOUNT_SID:?TWILIO_ACCOUNT_SID is required}
PARENT_TOKEN=${TWILIO_AUTH_TOKEN:?TWILIO_AUTH_TOKEN is required}
ROUNDS=${ROUNDS:-0}
STEP_SECONDS=${STEP_SECONDS:-3}
ROUND_PAUSE_SECONDS=${ROUND_PAUSE_SECONDS:-60}
TRIP_TIMEOUT_SECONDS=${TRIP_TIMEOUT_SECONDS:-300}

log() { echo "traffic: $*"; }
fail() { echo "traffic: $*" >&2; exit 1; }

# elapsed START: seconds since START (date +%s)
elapsed() { echo $(( $(date +%s) - $1 )); }

start=$(date +%s)
until curl -fsS -o /dev/null "$SIM_URL/sim/state"; do
  [ "$(elapsed "$start")" -le 120 ] || fail "the simulator at $SIM_URL did not answer"
  sleep 1
done
until curl -fsS -o /dev/null "$ADMIN_URL/-/ready"; do
  [ "$(elapsed "$start")" -le 300 ] || fail "usagebreaker at $ADMIN_URL did not become ready"
  sleep 1
done

round=1
while :; do
  name="tenant-$(date +%H%M%S)-$round"
  sid=$(curl -fsS -d "FriendlyName=$name" "$SIM_URL/sim/accounts" | tr ',' '\n' |
    sed -n 's/.*"sid": *"\(AC[0-9a-fA-F]*\)".*/\1/p' | head -n 1)
  [ -n "$sid" ] || fail "could not create a subaccount"
  log "created subaccount $name ($sid)"

  # A reconcile now rather than at the next scheduled one.
  if [ -r "$ADMIN_TOKEN_FILE" ]; then
    curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $(cat "$ADMIN_TOKEN_FILE")" \
      "$ADMIN_URL/api/v1/reconcile" || log "could not ask for a reconcile; waiting for the schedule"
  fi
  start=$(date +%s)
  until curl -fsS -u "$PARENT_SID:$PARENT_TOKEN" "$SIM_URL/2010-04-01/Accounts/$sid/Usage/Triggers.json" |
    grep -q '"friendly_name": *"usagebreaker:'; do
    [ "$(elapsed "$start")" -le "$TRIP_TIMEOUT_SECONDS" ] || fail "usagebreaker registered no trigger on $name"
    sleep 1
  done
  log "usagebreaker registered its Usage Triggers on $name"

  start=$(date +%s)
  steps=0
  while :; do
    code=$(curl -sS -o /dev/null -w '%{http_code}' -d "AccountSid=$sid" -d UsageCategory=sms \
      -d Count=25 -d Usage=25 -d Price=2.50 -d Wait=true "$SIM_URL/sim/usage") || code=000
    case $code in
    200)
      steps=$((steps + 1))
      log "$name sent 25 SMS (\$2.50); $((steps * 25)) SMS, \$$((steps * 5 / 2)).$((steps * 5 % 2 * 5))0 today"
      ;;
    409)
      log "$name is suspended: usagebreaker stopped it after $((steps * 25)) SMS, within $(elapsed "$start")s"
      break
      ;;
    *)
      fail "adding usage to $name: HTTP $code"
      ;;
    esac
    [ "$(elapsed "$start")" -le "$TRIP_TIMEOUT_SECONDS" ] || fail "$name was not suspended within ${TRIP_TIMEOUT_SECONDS}s"
    sleep "$STEP_SECONDS"
  done

  if [ "$ROUNDS" -ne 0 ] && [ "$round" -ge "$ROUNDS" ]; then
    log "done: $round round(s)"
    exit 0
  fi
  round=$((round + 1))
  sleep "$ROUND_PAUSE_SECONDS"
done
