#!/usr/bin/env bash
# Side by side: gateway CPU per request of inject_token against a bare
# reverse_proxy, measured the same way for every site in one run.
#
# Needs: go (to build caddy with this module), wrk, curl, Linux /proc. Installs
# nothing: it says what is missing and stops. Uses 127.0.0.1 ports
# $PORT_BASE..+8, +19 and +100 (default 18000) and a temporary directory.
#
#   interop/bench/run.sh [rounds] [seconds]      # default 3 rounds of 6 s per site
#
# Two Caddy processes: the upstream (a `respond` plus a static token
# endpoint) and the gateway, with one site per variant:
#   bare      reverse_proxy
#   static    request_header Authorization "Bearer static" + reverse_proxy
#   bearer    inject_token (oauth2, dpop off) + reverse_proxy
#   dpop-es   inject_token (oauth2, DPoP ES256) + reverse_proxy transport inject_token
#   dpop-ed   the same with EdDSA
#   sign-es   one bare ES256 signature per request (bench_raw_sign) + reverse_proxy
#   sign-ed   the same with Ed25519
#   template  inject_token template (oauth2, dpop off), key {http.request.header.X-User},
#             wrk picking X-User from $KEYS (default 10,000) distinct keys in rotation;
#             every key is logged in (a session each) before the first round
# The sign-* sites are "bare + raw signature" measured inside the gateway,
# where a signature costs ~2x what a Go benchmark shows (caches shared with
# wrk and the upstream); the DPoP rows are compared with them too.
# Each round runs every site once (`wrk -t1 -c32`), in an order that
# alternates between rounds, and reads the gateway's utime+stime from
# /proc/<pid>/stat before and after: CPU µs per request = CPU time / requests.
# The table shows medians over rounds. The gateway and wrk share the machine:
# on a busy or shared machine, run more rounds and read the spread.
set -euo pipefail

ROUNDS=${1:-3}
KEYS=${KEYS:-10000}
SECS=${2:-6}
PORT_BASE=${PORT_BASE:-18000}

missing=()
command -v go >/dev/null || missing+=("go (https://go.dev/dl/)")
command -v wrk >/dev/null || missing+=("wrk (e.g. apt-get install wrk)")
command -v curl >/dev/null || missing+=("curl")
[ -r /proc/self/stat ] || missing+=("Linux /proc")
if [ ${#missing[@]} -gt 0 ]; then
	printf 'interop/bench/run.sh needs: %s\n' "${missing[@]}" >&2
	exit 1
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

echo "building caddy with inject_token (and bench_raw_sign)..." >&2
(cd "$ROOT" && go build -o "$TMP/caddy" ./bench/cmd/caddy-bench)

UP=$((PORT_BASE + 100))
TOKEN=$(head -c 600 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '=')
cat >"$TMP/upstream.caddyfile" <<CADDY
{
	admin off
	auto_https off
	persist_config off
}
http://127.0.0.1:$UP {
	handle /bearer/token {
		header Content-Type application/json
		respond \`{"access_token":"$TOKEN","token_type":"Bearer","expires_in":86400}\`
	}
	handle /dpop/token {
		header Content-Type application/json
		respond \`{"access_token":"$TOKEN","token_type":"DPoP","expires_in":86400}\`
	}
	respond "ok"
}
CADDY

session() { # name endpoint dpop
	cat <<CADDY
	inject_token {
		session $1
		oauth2 http://127.0.0.1:$UP/$2/token {
			client_id bench
			client_secret bench
		}
		dpop $3
	}
CADDY
}
cat >"$TMP/gateway.caddyfile" <<CADDY
{
	admin 127.0.0.1:$((PORT_BASE + 19))
	auto_https off
	persist_config off
	storage file_system $TMP/storage
}
http://127.0.0.1:$((PORT_BASE + 1)) {
	reverse_proxy 127.0.0.1:$UP
}
http://127.0.0.1:$((PORT_BASE + 2)) {
	request_header Authorization "Bearer static"
	reverse_proxy 127.0.0.1:$UP
}
http://127.0.0.1:$((PORT_BASE + 3)) {
$(session bench-bearer bearer off)
	reverse_proxy 127.0.0.1:$UP
}
http://127.0.0.1:$((PORT_BASE + 4)) {
$(session bench-es256 dpop ES256)
	reverse_proxy 127.0.0.1:$UP {
		transport inject_token
	}
}
http://127.0.0.1:$((PORT_BASE + 5)) {
$(session bench-eddsa dpop EdDSA)
	reverse_proxy 127.0.0.1:$UP {
		transport inject_token
	}
}
http://127.0.0.1:$((PORT_BASE + 6)) {
	route {
		bench_raw_sign ES256
		reverse_proxy 127.0.0.1:$UP
	}
}
http://127.0.0.1:$((PORT_BASE + 7)) {
	route {
		bench_raw_sign EdDSA
		reverse_proxy 127.0.0.1:$UP
	}
}
http://127.0.0.1:$((PORT_BASE + 8)) {
	inject_token {
		template bench-users
		key {http.request.header.X-User}
		oauth2 http://127.0.0.1:$UP/bearer/token {
			client_id bench
			client_secret bench
		}
		dpop off
		max_resident $((KEYS + 1000))
	}
	reverse_proxy 127.0.0.1:$UP
}
CADDY
# wrk: each connection's requests name the keys in rotation, offset per
# connection, so every key is used once per $KEYS requests.
cat >"$TMP/keys.lua" <<LUA
local n, i = $KEYS, 0
init = function(args) i = math.random(0, n - 1) end
request = function()
	i = (i + 1) % n
	return wrk.format(nil, nil, {["X-User"] = "user-" .. i})
end
LUA

"$TMP/caddy" run --config "$TMP/upstream.caddyfile" --adapter caddyfile >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
"$TMP/caddy" run --config "$TMP/gateway.caddyfile" --adapter caddyfile >"$TMP/gateway.log" 2>&1 &
GW=$!
PIDS+=("$GW")

NAMES=(bare static bearer dpop-es dpop-ed sign-es sign-ed template)
LABELS=("bare reverse_proxy" "static request_header Authorization" "inject_token Bearer"
	"inject_token oauth2 + transport, DPoP ES256" "same, EdDSA"
	"raw ES256 signature + reverse_proxy" "raw Ed25519 signature + reverse_proxy"
	"inject_token template, $KEYS keys in rotation, Bearer")
# The raw-signature site each DPoP row is compared with.
SIGN_OF=([3]=5 [4]=6)
for i in 1 2 3 4 5 6 7 8; do # wait until each site answers (and has its token)
	for _ in $(seq 100); do
		[ "$(curl -s -o /dev/null -w '%{http_code}' -H 'X-User: user-0' "http://127.0.0.1:$((PORT_BASE + i))/" 2>/dev/null)" = 200 ] && break
		sleep 0.1
	done
	code=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-User: user-0' "http://127.0.0.1:$((PORT_BASE + i))/" || true)
	if [ "$code" != 200 ]; then
		echo "site ${NAMES[$((i - 1))]} answers $code; gateway log:" >&2
		tail -20 "$TMP/gateway.log" >&2
		exit 1
	fi
done

# Every key logged in (its first use) before the measured rounds: the
# rounds measure the steady state, sessions resident, not $KEYS logins.
echo "logging in $KEYS template sessions..." >&2
for _ in $(seq 20); do
	wrk -t1 -c32 -d5s -s "$TMP/keys.lua" "http://127.0.0.1:$((PORT_BASE + 8))/" >/dev/null
	resident=$(curl -s "http://127.0.0.1:$((PORT_BASE + 19))/inject_token/templates/bench-users" | sed -n 's/.*"active":\([0-9]*\).*/\1/p')
	echo "  $resident active" >&2
	[ "${resident:-0}" -ge "$KEYS" ] && break
done

TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$GW/stat"; }

rss() { awk '/VmRSS/ {print $2}' "/proc/$GW/status"; }
RSS_START=
TOTAL=0
declare -A RPS CPU
for r in $(seq "$ROUNDS"); do
	order=(0 1 2 3 4 5 6 7)
	if [ $((r % 2)) = 0 ]; then order=(7 6 5 4 3 2 1 0); fi
	for i in "${order[@]}"; do
		port=$((PORT_BASE + i + 1))
		script=()
		if [ "$i" = 7 ]; then script=(-s "$TMP/keys.lua"); fi
		wrk -t1 -c32 -d1s "${script[@]}" "http://127.0.0.1:$port/" >/dev/null # warm connections
		before=$(cpu)
		out=$(wrk -t1 -c32 -d"${SECS}s" "${script[@]}" "http://127.0.0.1:$port/")
		after=$(cpu)
		reqs=$(awk '/requests in/ {print $1}' <<<"$out")
		rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
		us=$(awk -v t=$((after - before)) -v k="$TCK" -v n="$reqs" 'BEGIN {printf "%.1f", t / k * 1e6 / n}')
		TOTAL=$((TOTAL + reqs))
		RPS[$i]+="$rps "
		CPU[$i]+="$us "
		echo "round $r ${NAMES[$i]}: $rps req/s, $us µs CPU/request" >&2
	done
	if [ -z "$RSS_START" ]; then RSS_START=$(rss) START_TOTAL=$TOTAL; fi
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
bare_rps=$(median "${RPS[0]}")
bare_cpu=$(median "${CPU[0]}")
echo
echo "$(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $ROUNDS rounds x ${SECS}s, wrk -t1 -c32, medians"
echo "gateway RSS: $RSS_START KiB after round 1 ($START_TOTAL requests), $(rss) KiB after all $TOTAL"
echo
echo "| site | req/s | rps vs bare | gateway CPU µs/request | vs bare | vs raw-signature site |"
echo "|---|---|---|---|---|---|"
for i in 0 1 2 3 4 5 6 7; do
	rps=$(median "${RPS[$i]}")
	us=$(median "${CPU[$i]}")
	su=""
	if [ -n "${SIGN_OF[$i]:-}" ]; then su=$(median "${CPU[${SIGN_OF[$i]}]}"); fi
	awk -v l="${LABELS[$i]}" -v r="$rps" -v br="$bare_rps" -v u="$us" -v bu="$bare_cpu" -v i="$i" -v su="$su" \
		'BEGIN {d = (i == 0) ? "" : sprintf("%+.1f", u - bu); s = (su == "") ? "" : sprintf("%+.1f", u - su)
		printf "| %s | %.0f | %.2f | %.1f | %s | %s |\n", l, r, r / br, u, d, s}'
done
awk -v t="$(median "${CPU[7]}")" -v b="$(median "${CPU[2]}")" -v k="$KEYS" \
	'BEGIN {printf "\ntemplate (%d keys) vs the single-session Bearer site: %+.1f µs CPU/request\n", k, t - b}'
