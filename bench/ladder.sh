#!/usr/bin/env bash
# The size ladder: bench/intake.sh at every message size of the defined
# benchmark, in one mode, and a table of the ratios (gomail ÷ Postfix, same run).
#
#   bench/ladder.sh            # both relaying to smtp-sink, intake rate, 3 rounds per size
#   bench/ladder.sh -e         # end to end (until the sink has every message)
#   bench/ladder.sh -L         # both delivering into local Maildirs
#   bench/ladder.sh -r 1 -q    # quick look: 1 round, a fifth of the messages
#   bench/ladder.sh -S "1024 102400"   # only these sizes
#
# Message counts give each run at least about 30 s of load on a 2-core
# machine (fewer messages for big sizes). See bench/README.md.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

MODE_FLAG="" ROUNDS=3 QUICK=0 SIZES="1024 5120 102400 1048576 10485760"
while getopts "eLr:qS:h" opt; do
    case $opt in
    e) MODE_FLAG=-e ;;
    L) MODE_FLAG=-L ;;
    r) ROUNDS=$OPTARG ;;
    q) QUICK=1 ;;
    S) SIZES=$OPTARG ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done

messages_for() {  # the messages per run for a size
    case $1 in
    1024 | 5120) echo 20000 ;;
    102400) echo 8000 ;;
    1048576) echo 3000 ;;
    10485760) echo 300 ;;
    *) echo $(( 2000000000 / ($1 + 4096) > 20000 ? 20000 : 2000000000 / ($1 + 4096) )) ;;
    esac
}

BENCH=$(cd "$(dirname "$0")" && pwd)
results=()
for size in $SIZES; do
    [[ $size =~ ^[0-9]+$ ]] || { echo "not a size: $size" >&2; exit 2; }
    messages=$(messages_for "$size")
    (( QUICK )) && messages=$(( messages / 5 > 20 ? messages / 5 : 20 ))
    out=$(mktemp /tmp/gomail-ladder.XXXXXX)
    "$BENCH/intake.sh" $MODE_FLAG -r "$ROUNDS" -m "$messages" -l "$size" | tee "$out"
    results+=("$(grep -o 'JSON: .*' "$out" | tail -1 | cut -d' ' -f2)")
    rm -f "$out"
done

PY=${PYTHON:-$(dirname "$BENCH")/.venv/bin/python}
[[ -x $PY ]] || PY=python3
"$PY" - "${results[@]}" <<'PYEOF'
import json, sys
print()
print("| size | mode | gomail msg/s | Postfix msg/s | ratio | gomail CPU ms/msg | Postfix CPU ms/msg | gomail CPU ns/byte |")
print("|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    with open(path) as f:
        r = json.load(f)
    p, g, pf = r["params"], r["sides"]["gomail"], r["sides"]["postfix"]
    key = "e2e_msgs_per_s" if p["mode"] == "e2e" else "msgs_per_s"
    size = p["size"]
    label = f"{size // 1048576} MB" if size >= 1048576 else f"{size // 1024} KB"
    cpu = g.get("cpu_ms_per_msg_total", {}).get("median")
    pf_cpu = pf.get("cpu_ms_per_msg_total", {}).get("median")
    per_byte = g.get("cpu_ns_per_byte_total", {}).get("median")
    ratio = r.get("ratio_gomail_over_postfix_median")
    print(f"| {label} | {p['mode']} | {g[key]['median']:.0f} | {pf[key]['median']:.0f} | {ratio:.2f} | "
          f"{cpu if cpu is None else round(cpu, 2)} | {pf_cpu if pf_cpu is None else round(pf_cpu, 2)} | "
          f"{per_byte if per_byte is None else round(per_byte, 1)} |")
PYEOF
