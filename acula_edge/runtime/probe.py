"""Load and run a bundle once in a child process, for runtimes that can take the process down.

TFLite Micro segfaults on a far too small arena and does not verify its flatbuffer; ExecuTorch aborts
("terminate called ...") on some corrupt delegate payloads that pass its program verification. A bundle for such a
runtime is first opened here in a child Python process, from the same checked bytes (sent on stdin), and one
all-zero window is run: a crash there is a BundleError in the caller, whose process lives on. A success is
remembered per process for that manifest and model (the probe costs one interpreter start and the runtime's import).
"""

from __future__ import annotations

import hashlib
import json
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

from acula_edge.errors import BundleError, MissingDependencyError
from acula_edge.manifest import DIGEST_FIELD, Manifest, manifest_bytes

PROBE_TIMEOUT_S = 300.0  # a runtime import plus one window; far above the seconds it takes
_EXIT_USER_ERROR = 3  # the child raised a BundleError (or another user error): its message is the last stderr line
_EXIT_MISSING = 4  # the runtime is not installed
_passed: set[str] = set()
_lock = threading.Lock()


def probe_in_child(path: Path, manifest: Manifest, data: bytes) -> None:
    """Raise BundleError (or MissingDependencyError) unless ``data`` loads and runs one window in a child."""
    meta = manifest_bytes(manifest.to_dict())
    key = hashlib.sha256(meta + b"\0" + data).hexdigest()
    with _lock:
        if key in _passed:
            return
    payload = struct.pack("<Q", len(meta)) + meta + struct.pack("<Q", len(path.as_posix().encode())) + \
        path.as_posix().encode() + data
    try:
        proc = subprocess.run([sys.executable, "-m", "acula_edge.runtime.probe"], input=payload, capture_output=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BundleError(f"{path}: loading and running one window took over {PROBE_TIMEOUT_S:.0f} s in a test "
                          f"process; the model is corrupt or far too large; re-export the bundle") from None
    last = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
    if proc.returncode == 0:
        with _lock:
            _passed.add(key)
        return
    if proc.returncode == _EXIT_MISSING:
        raise MissingDependencyError(last)
    if proc.returncode == _EXIT_USER_ERROR:
        raise BundleError(last)
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        raise BundleError(f"{path}: the {manifest.target} runtime crashed ({sig}) loading or running this model in "
                          f"a test process; the model file is corrupt or a manifest setting is unusable (e.g. "
                          f"extra 'arena_bytes' below what the model needs); re-export the bundle")
    raise BundleError(f"{path}: the {manifest.target} runtime failed (exit {proc.returncode}) loading this model in "
                      f"a test process: {last}")


def _child() -> int:
    import numpy as np

    from acula_edge.errors import AculaEdgeError
    from acula_edge.runtime.backends import open_backend

    raw = sys.stdin.buffer.read()
    n = struct.unpack_from("<Q", raw, 0)[0]
    d = json.loads(raw[8:8 + n])
    for key in (DIGEST_FIELD, "model_sha256"):  # a manifest not yet sealed (an export being checked): the parent
        d[key] = d.get(key) or "0" * 64  # hashed nothing yet, and the child checks the model, not the bundle
    manifest = Manifest.from_dict(d, "manifest")
    m = struct.unpack_from("<Q", raw, 8 + n)[0]
    path = Path(raw[16 + n:16 + n + m].decode())
    data = raw[16 + n + m:]
    try:
        backend = open_backend(path, manifest, 1, data, probe=False)
        backend.run(np.zeros(manifest.inputs[0].shape, dtype=np.float32))
    except MissingDependencyError as e:
        print(str(e).replace("\n", " "), file=sys.stderr)
        return _EXIT_MISSING
    except AculaEdgeError as e:
        print(str(e).replace("\n", " "), file=sys.stderr)
        return _EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(_child())
