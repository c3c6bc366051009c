#!/usr/bin/env bash
# Run bundles in an aarch64 (Raspberry Pi 4 class) Python under QEMU user emulation and compare their outputs with
# this machine's (x86_64) run. Checks that the device install (core + one runtime extra, no torch) works on arm64
# and that outputs agree; emulated timings are NOT device timings, so none are reported.
#
#   sudo benchmarks/pi_emulation.sh BUNDLE... [-- DATA_SPEC]
#
#   BUNDLE     bundle folders (onnx and tflite targets; ExecuTorch's Python runtime needs torch, TFLM is for MCUs)
#   DATA_SPEC  recordings to compare on (default: synthetic:heart?n=6&seed=0)
#
# Environment: ROOTFS (default /var/tmp/acula-pi-rootfs; reused when it exists), PY_EXTRA (extra pip packages for
# the arm64 venv, default "onnxruntime ai-edge-litert"), KEEP_MOUNTS=1 to leave /proc etc. mounted.
#
# Needs root, network access to the Debian mirror and PyPI, about 8 minutes and 730 MB the first time (2 cores).
# Recipe (measured on this kind of machine): Debian's qemu-user-static + binfmt-support +
# debootstrap; binfmt_misc mounted and qemu-aarch64 enabled; a two-stage debootstrap of bookworm arm64 from the
# mirror in the host's apt sources; the host's locally added CA certificates copied into the rootfs; PIP_FIND_LINKS
# unset for pip inside. qemu 7.2 passes the host's x86 /proc/cpuinfo through, which crashes the cpuinfo library
# used by onnxruntime and XNNPACK, so a Cortex-A72 cpuinfo is bind-mounted over the rootfs's /proc/cpuinfo and
# QEMU_CPU=cortex-a72 is set.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTFS="${ROOTFS:-/var/tmp/acula-pi-rootfs}"
PY_EXTRA="${PY_EXTRA:-onnxruntime ai-edge-litert}"
HOST_PY="${HOST_PY:-$REPO/.venv/bin/python}"
WORK="$(mktemp -d /tmp/acula-pi-emu.XXXXXX)"

BUNDLES=()
DATA="synthetic:heart?n=6&seed=0"
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; DATA="${1:-$DATA}"; break; fi
  BUNDLES+=("$1"); shift
done
if [ ${#BUNDLES[@]} -eq 0 ]; then
  echo "usage: sudo $0 BUNDLE... [-- DATA_SPEC]" >&2; exit 2
fi
if [ "$(id -u)" -ne 0 ]; then echo "error: needs root (binfmt_misc, debootstrap, chroot)" >&2; exit 2; fi
for b in "${BUNDLES[@]}"; do
  [ -f "$b/manifest.json" ] || { echo "error: $b: not a bundle folder (no manifest.json)" >&2; exit 2; }
done

say() { printf '[pi-emulation %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# -- 1. emulation: qemu-user-static, binfmt_misc, qemu-aarch64 ---------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing qemu-user-static binfmt-support debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 2>/dev/null || true
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "error: qemu-aarch64 binfmt handler not registered" >&2; exit 1; }

# -- 2. an arm64 Debian bookworm rootfs (two-stage debootstrap) ---------------------------------------------------
mirror() {  # the Debian mirror this machine's apt uses (deb822 .sources or one-line sources.list)
  local m
  m="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1)"
  [ -n "$m" ] || m="$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1)"
  echo "${m:-http://deb.debian.org/debian}"
}
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  MIRROR="$(mirror)"
  say "debootstrap arm64 bookworm into $ROOTFS from $MIRROR (first stage)"
  rm -rf "$ROOTFS"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=ca-certificates bookworm "$ROOTFS" "$MIRROR" >/dev/null
  cp /usr/bin/qemu-aarch64-static "$ROOTFS/usr/bin/"
  say "second stage (emulated; several minutes)"
  chroot "$ROOTFS" /debootstrap/debootstrap --second-stage >/dev/null
  echo "deb $MIRROR bookworm main" > "$ROOTFS/etc/apt/sources.list"
fi
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
# Locally added CA certificates (a proxy on this machine), so apt and pip inside trust the same hosts.
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
  mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/* "$ROOTFS/usr/local/share/ca-certificates/"
fi

# -- 3. mounts: /proc with a Cortex-A72 cpuinfo (Pi 4), /dev, /sys --------------------------------------------------
cat > "$WORK/cpuinfo" <<'CPUINFO'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

processor	: 1
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

Hardware	: BCM2835
Model		: Raspberry Pi 4 Model B (QEMU emulation)
CPUINFO
cleanup() {  # rbind mounts have submounts: unmount recursively, and never leave /dev or /sys bound in the rootfs
  if [ "${KEEP_MOUNTS:-0}" != 1 ]; then
    for m in proc/cpuinfo proc sys dev; do
      if mountpoint -q "$ROOTFS/$m"; then umount -R "$ROOTFS/$m" || umount -R -l "$ROOTFS/$m" || true; fi
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
mountpoint -q "$ROOTFS/sys" || mount --rbind /sys "$ROOTFS/sys"
mountpoint -q "$ROOTFS/dev" || mount --rbind /dev "$ROOTFS/dev"
mount --bind "$WORK/cpuinfo" "$ROOTFS/proc/cpuinfo"
export QEMU_CPU=cortex-a72

in_root() {  # run a command in the arm64 rootfs with a clean environment (no host pip settings)
  chroot "$ROOTFS" /usr/bin/env -i HOME=/root PATH=/opt/acula/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    QEMU_CPU=cortex-a72 "$@"
}

# -- 4. the device install: core + runtime extras, never torch ------------------------------------------------------
if [ ! -x "$ROOTFS/opt/acula/bin/python" ]; then
  say "apt: python3, venv, libsndfile (emulated)"
  in_root update-ca-certificates >/dev/null 2>&1 || true
  in_root apt-get update -qq >/dev/null
  in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv libsndfile1 >/dev/null
  in_root python3 -m venv /opt/acula
fi
say "pip (arm64): acula-edge core + $PY_EXTRA"
rm -rf "$ROOTFS/opt/src" && mkdir -p "$ROOTFS/opt/src"
(cd "$REPO" && git ls-files -z | xargs -0 -I{} cp --parents {} "$ROOTFS/opt/src/")
in_root /opt/acula/bin/pip install -q --disable-pip-version-check --no-deps /opt/src
# shellcheck disable=SC2086
in_root /opt/acula/bin/pip install -q --disable-pip-version-check "numpy>=1.24" "scipy>=1.10" "soundfile>=0.12" \
  "click>=8.1" $PY_EXTRA

# -- 5. the same recordings through every bundle, here and there ----------------------------------------------------
mkdir -p "$ROOTFS/opt/bundles" "$ROOTFS/opt/out"
NAMES=()
for b in "${BUNDLES[@]}"; do
  n="$(basename "$(cd "$b" && pwd)")"
  rm -rf "$ROOTFS/opt/bundles/$n" && cp -r "$b" "$ROOTFS/opt/bundles/$n"
  NAMES+=("/opt/bundles/$n")
done
cat > "$ROOTFS/opt/out/dump.py" <<'PY'
"""Outputs of bundles on the same recordings: front-end, offline classify, and the model on given windows."""
import json, platform, sys
import numpy as np
import acula_edge
from acula_edge.data import load_dataset
from acula_edge.windows import recording_windows

out, data, windows_in = sys.argv[1], sys.argv[2], sys.argv[3]
bundles = sys.argv[4:]
res = {"machine": platform.machine(), "torch_loaded": "torch" in sys.modules}
arrays = {}
ds = load_dataset(data)
given = np.load(windows_in) if windows_in != "-" else None
for i, b in enumerate(bundles):
    m = acula_edge.load(b, num_threads=1)
    for r, rec in enumerate(ds):
        x = rec.load(m.sample_rate, min_samples=m.window_samples, pad=True)
        c = m.classify(x, m.sample_rate)
        arrays[f"b{i}_r{r}_prob"] = c.probabilities
        arrays[f"b{i}_r{r}_emb"] = c.embedding
        if i == 0:
            arrays[f"r{r}_windows"] = recording_windows(x, m.frontend, m.windowing, m.logmel)
    if given is not None:  # the model alone on the other machine's windows
        w = given["windows"]
        arrays[f"b{i}_given_logits"] = np.stack([m.backend.run(w[k][None, None])[1] for k in range(w.shape[0])])
np.savez(out, **arrays)
print(json.dumps(res))
PY
say "x86_64 run"
REL_BUNDLES=()
for b in "${BUNDLES[@]}"; do REL_BUNDLES+=("$(cd "$b" && pwd)"); done
"$HOST_PY" "$ROOTFS/opt/out/dump.py" "$WORK/host.npz" "$DATA" - "${REL_BUNDLES[@]}"
"$HOST_PY" -c "
import numpy as np, sys
a = np.load('$WORK/host.npz'); w = [a[k] for k in sorted(a.files) if k.endswith('_windows')]
np.savez('$ROOTFS/opt/out/windows.npz', windows=np.concatenate(w))"
say "aarch64 run (emulated)"
in_root /opt/acula/bin/python /opt/out/dump.py /opt/out/arm.npz "$DATA" /opt/out/windows.npz "${NAMES[@]}"
"$HOST_PY" "$ROOTFS/opt/out/dump.py" "$WORK/host2.npz" "$DATA" "$ROOTFS/opt/out/windows.npz" "${REL_BUNDLES[@]}" \
  >/dev/null
say "aarch64: acula-edge bench latency runs (timings under emulation are not device timings)"
in_root /opt/acula/bin/acula-edge bench latency "${NAMES[@]}" --runs 5 --warmup 1 --min-seconds 0 \
  --json-out /opt/out/latency-emulated.json >/dev/null

# -- 6. compare --------------------------------------------------------------------------------------------------
"$HOST_PY" - "$WORK/host2.npz" "$ROOTFS/opt/out/arm.npz" "${REL_BUNDLES[@]}" <<'PY'
import sys
import numpy as np
host, arm, bundles = np.load(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3:]
n_rec = sum(1 for k in host.files if k.endswith("_windows"))
fe = max(float(np.abs(host[f"r{r}_windows"] - arm[f"r{r}_windows"]).max()) for r in range(n_rec))
print(f"front-end (log-mel windows), max |x86 - arm64|: {fe:.3g} over {n_rec} recordings")
print(f"{'bundle':<40} {'max |dp| classify':>18} {'max |d emb|':>12} {'max |d logits| same windows':>28} "
      f"{'decisions':>10}")
worst = 0.0
for i, b in enumerate(bundles):
    dp = max(float(np.abs(host[f"b{i}_r{r}_prob"] - arm[f"b{i}_r{r}_prob"]).max()) for r in range(n_rec))
    de = max(float(np.abs(host[f"b{i}_r{r}_emb"] - arm[f"b{i}_r{r}_emb"]).max()) for r in range(n_rec))
    dl = float(np.abs(host[f"b{i}_given_logits"] - arm[f"b{i}_given_logits"]).max())
    same = sum(int(np.argmax(host[f"b{i}_r{r}_prob"]) == np.argmax(arm[f"b{i}_r{r}_prob"])) for r in range(n_rec))
    worst = max(worst, dp)
    print(f"{b[-40:]:<40} {dp:>18.3g} {de:>12.3g} {dl:>28.3g} {same:>4}/{n_rec:<5}")
print("PASS" if worst < 1e-2 else "CHECK: probabilities differ by more than 1e-2 between x86_64 and arm64")
PY
