"""``replaybench doctor``: which optional parts are usable on this machine, and how to get the rest."""

from __future__ import annotations

import importlib.util
import shutil

from pydantic import BaseModel, ConfigDict


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    ok: bool
    optional: bool
    detail: str
    install: str | None = None


class DoctorReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if not c.optional)


def _module_version(module: str) -> str | None:
    """Version of an installed distribution without importing it (importing tensorflow takes seconds)."""
    from importlib import metadata

    if importlib.util.find_spec(module) is None:
        return None
    dist = {"tensorflow": "tensorflow-cpu", "ai_edge_litert": "ai-edge-litert", "PIL": "pillow"}.get(
        module, module
    )
    for name in (dist, module, module.replace("_", "-")):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "installed"


def _python_check(name: str, module: str, install: str, optional: bool = False) -> Check:
    version = _module_version(module)
    return Check(
        name=name,
        ok=version is not None,
        optional=optional,
        detail=f"{module} {version}" if version else f"{module} not importable",
        install=install,
    )


def _tool_check(name: str, tool: str, install: str) -> Check:
    path = shutil.which(tool)
    return Check(
        name=name, ok=path is not None, optional=True, detail=path or f"{tool} not on PATH", install=install
    )


def _onnxruntime_providers() -> Check:
    if importlib.util.find_spec("onnxruntime") is None:
        return Check(
            name="onnxruntime",
            ok=False,
            optional=False,
            detail="not installed",
            install="pip install onnxruntime",
        )
    import onnxruntime as ort

    providers = ort.get_available_providers()
    return Check(
        name="onnxruntime execution providers",
        ok=True,
        optional=False,
        detail=", ".join(providers),
        install="for CUDA: pip install onnxruntime-gpu",
    )


def check_environment() -> DoctorReport:
    """Probe this machine. Cheap: finds modules without importing the heavy ones (except onnxruntime)."""
    from replaybench import __version__
    from replaybench.replay.runtimes import runtimes

    apt = "apt-get install -y {}"
    checks = [
        _onnxruntime_providers(),
        _python_check(
            "tensorflow (TFLite/TF conversion and parity)", "tensorflow", "pip install tensorflow-cpu"
        ),
        _python_check("tf2onnx", "tf2onnx", "pip install tf2onnx"),
        *(
            _python_check(
                f"{rt.describe} (replay runtime '{rt.name}')",
                rt.module.split(".")[0],
                f"pip install {rt.package}",
            )
            for rt in runtimes()
            if rt.open_engine is not None and rt.name != "pytorch_lite"  # torch: checked below
        ),
        _python_check("torch (TorchScript / PyTorch Mobile)", "torch", "pip install torch"),
        _python_check("transformers (student text encoder)", "transformers", "pip install transformers"),
        _python_check("androguard (DEX code evidence)", "androguard", "pip install androguard"),
        _python_check("lief (native libraries)", "lief", "pip install lief"),
        _python_check("frida (trace capture)", "frida", "pip install 'replaybench[frida]'", optional=True),
        _python_check("HEIC decoding", "pillow_heif", "pip install 'replaybench[heic]'", optional=True),
        _python_check(
            "ray (replay --ray on a cluster)", "ray", "pip install 'replaybench[cluster]'", optional=True
        ),
        _tool_check("smali (test APKs)", "smali", apt.format("smali")),
        _tool_check("aapt (test APKs)", "aapt", apt.format("aapt android-framework-res")),
        _tool_check("apksigner (test APKs)", "apksigner", apt.format("apksigner")),
        _tool_check("zipalign (test APKs)", "zipalign", apt.format("zipalign")),
        _tool_check(
            "aarch64 cross compiler (test .so files)",
            "aarch64-linux-gnu-gcc",
            # without the arm64 C library the compiler links nothing
            apt.format("gcc-aarch64-linux-gnu libc6-dev-arm64-cross"),
        ),
        _tool_check("chromium (report rendering test)", "chromium", apt.format("chromium")),
    ]
    return DoctorReport(version=__version__, checks=checks)
