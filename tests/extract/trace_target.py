"""A stand-in for an app, traced by tests/extract/test_trace_frida.py: loads a TFLite model with
ai_edge_litert, invokes it a few times with known inputs, and saves what it fed (and got) to a .npz.

Usage: python trace_target.py MODEL.tflite path|content FED.npz [INVOKES]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def main() -> int:
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
    np.savez(fed, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
