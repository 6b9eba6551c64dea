"""The bundle folder: ``model.so`` + ``manifest.json`` + ``runtime/``; copying it is the deployment."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgecc.errors import DeviceError, EdgeccError, UserInputError

MANIFEST = "manifest.json"
LIBRARY = "model.so"
RUNNER = "edgecc-run"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def output_file_name(name: str) -> str:
    """``<output name>.npy`` with characters unsafe in file names (``/`` ...) replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".npy"


def gpu_present() -> bool:
    """True when an NVIDIA driver and device are visible to this process."""
    return Path("/dev/nvidiactl").exists() and shutil.which("nvidia-smi") is not None


def _shape_matches(shape, expected, sizes: dict) -> bool:
    """Whether ``shape`` fits a manifest shape whose symbolic dims (strings) take any size,
    the same size everywhere one symbol appears (recorded in ``sizes``)."""
    if len(shape) != len(expected):
        return False
    for got, want in zip(shape, expected):
        if isinstance(want, str):
            if sizes.setdefault(want, got) != got:
                return False
        elif got != want:
            return False
    return True


class Bundle:
    """A compiled model: a folder with the library, its manifest and the runtime for its arch.

    Bundles come from :func:`edgecc.compile` (in a private staging folder until
    :meth:`save`) or from :func:`edgecc.load`.
    """

    def __init__(self, path: Path, manifest: dict, *, staging: tempfile.TemporaryDirectory | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self._staging = staging  # keeps a compiled-but-unsaved bundle's folder alive

    @property
    def target(self) -> dict:
        return self.manifest["target"]

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    def save(self, outdir: str | os.PathLike) -> Path:
        """Write the bundle to ``outdir`` atomically: a failure never leaves a half bundle there.

        The folder is assembled next to ``outdir`` and renamed into place; an
        existing bundle at ``outdir`` is replaced only once the new one is complete.
        """
        outdir = Path(outdir).resolve()
        if outdir.exists() and not (outdir / MANIFEST).exists() and any(outdir.iterdir()):
            raise UserInputError(f"{outdir} exists and is not an edgecc bundle; refusing to replace it")
        outdir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
        try:
            shutil.copytree(self.path, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
            old = None
            if outdir.exists():
                old = outdir.with_name(f".{outdir.name}.old-{os.getpid()}")
                outdir.rename(old)
            tmp.rename(outdir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path, self._staging = outdir, None
        return outdir

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Validate names, shapes and dtypes against the manifest; return arrays in ``main``'s order."""
        expected = {spec["name"]: spec for spec in self.inputs}
        unknown = [name for name in inputs if name not in expected]
        if unknown:
            raise UserInputError(f"unknown input {unknown[0]!r}; the model's inputs are: {', '.join(expected)}")
        ordered, sizes = [], {}  # symbolic dim -> the size the first input carrying it gave
        for name, spec in expected.items():
            if name not in inputs:
                raise UserInputError(f"missing input {name!r} (shape {spec['shape']}, {spec['dtype']})")
            array = np.asarray(inputs[name])
            if not _shape_matches(array.shape, spec["shape"], sizes):
                raise UserInputError(f"input {name!r} has shape {list(array.shape)}, expected {spec['shape']}"
                                     + (f" with {sizes}" if sizes else ""))
            if array.dtype.name != spec["dtype"]:
                raise UserInputError(f"input {name!r} has dtype {array.dtype.name}, expected {spec['dtype']}")
            ordered.append(np.ascontiguousarray(array))
        return ordered

    def command(self) -> list[str]:
        """How to start this bundle's runner on this machine (natively or under qemu-user)."""
        from edgecc.runtime import emulator_prefix

        target = self.target
        if target["device"] == "cuda":
            if emulator_prefix(target["arch"], None):
                raise DeviceError(f"target '{target['name']}' runs on an {target['arch']} board with a GPU; "
                                  "this machine can build it but not run it")
            if not gpu_present():
                raise DeviceError("no GPU is present on this machine; the CUDA bundle was built "
                                  "but can only run where an NVIDIA GPU and driver are")
        return [*emulator_prefix(target["arch"], target.get("vlen")), str(self.path / "runtime" / RUNNER)]

    def run(self, inputs: dict[str, np.ndarray], *, repeat: int = 1, threads: int | None = None,
            timing: dict | None = None, warmup: int | None = None) -> dict[str, np.ndarray]:
        """Run ``main`` on named inputs and return ``{output name: array}``.

        Executes the bundle's own runner, under qemu-user when the target arch
        differs from this machine's. ``timing``, if given, receives the runner's
        timing record (``median_ms`` ...) over ``repeat`` runs after ``warmup``
        untimed ones (default 1, or 0 under an emulator, where timing means nothing).
        """
        arrays = self.check_inputs(inputs)
        command = self.command()
        if warmup is None:
            warmup = 0 if command[0].startswith("qemu-") else 1
        with tempfile.TemporaryDirectory(prefix="edgecc-run-") as work:
            work = Path(work)
            argv = command + [str(self.path / LIBRARY), "--device", self.target["device"],
                              "--output-dir", str(work), "--repeat", str(repeat), "--warmup", str(warmup)]
            if threads:
                argv += ["--threads", str(threads)]
            for index, array in enumerate(arrays):
                np.save(work / f"input_{index}.npy", array)
                argv += ["--input", str(work / f"input_{index}.npy")]
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                message = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
                error = DeviceError if proc.returncode == 3 else EdgeccError
                raise error(f"running {self.path.name}/{LIBRARY} failed: {message}")
            if timing is not None:
                timing.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            return {spec["name"]: np.load(work / f"output_{index}.npy")
                    for index, spec in enumerate(self.outputs)}

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, target={self.target['name']!r})"


def _link_or_copy(src, dst):
    """Hard-link runtime files from the cache when possible: bundles share them for free."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def load(path: str | os.PathLike) -> Bundle:
    """Open a saved bundle folder, checking that its library matches the manifest."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UserInputError(f"{path} is not an edgecc bundle (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{manifest_path} is corrupt: {err}") from None
    library = path / LIBRARY
    if not library.is_file() or sha256(library) != manifest.get("model_sha256"):
        raise UserInputError(f"{library} is missing or does not match the manifest's sha256; rebuild the bundle")
    return Bundle(path, manifest)
