"""A stand-in for an app, traced by tests/extract/test_trace_frida.py: loads a TFLite model with
ai_edge_litert, invokes it a few times with known inputs, and saves what it fed (and got) to a .npz.

Usage: python trace_target.py MODEL.tflite path|content FED.npz [INVOKES]

After saving FED.npz it stays alive (the test ends the capture when FED.npz appears, and the capture
kills it): a process that exits while Frida hooks are live occasionally hangs in its exit path.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np


def main() -> int:
    from ai_edge_litert.interpreter import Interpreter

    model, mode, fed = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    invokes = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    if mode == "path":
        interp = Interpreter(model_path=str(model))
    else:
        interp = Interpreter(model_content=model.read_bytes())
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    rng = np.random.default_rng(1234)
    arrays: dict[str, np.ndarray] = {}
    for i in range(invokes):
        if np.issubdtype(inp["dtype"], np.integer):
            info = np.iinfo(inp["dtype"])
            x = rng.integers(info.min, info.max + 1, size=inp["shape"]).astype(inp["dtype"])
        else:
            x = rng.random(inp["shape"], dtype=np.float32).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        arrays[f"input_{i}"] = x
        arrays[f"output_{i}"] = interp.get_tensor(out["index"])
    tmp = fed.with_name(fed.stem + ".part.npz")
    np.savez(tmp, **arrays)
    tmp.replace(fed)  # appears complete or not at all
    time.sleep(60)
    return 0


def stop_when_exists(path: Path, timeout: float = 120.0) -> threading.Event:
    """An event set once ``path`` exists (polled in a daemon thread): ends a capture when the target is done."""
    stop = threading.Event()

    def poll() -> None:
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=poll, daemon=True).start()
    return stop


if __name__ == "__main__":
    sys.exit(main())
