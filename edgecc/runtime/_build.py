"""Building and caching the per-arch runtime folder (see :mod:`edgecc.runtime`)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterator

from edgecc.errors import RuntimeBuildError, UserInputError
from edgecc.targets.base import find_cxx

ARCHES = ("x86_64", "aarch64", "riscv64")
"""Target arches edgecc builds a runtime for."""

RUNNER = "edgecc-run"
LIBRARIES = ("libtvm_runtime.so", "libtvm_ffi.so")
"""Libraries every runtime folder holds (some also hold libtvm_runtime_extra/_cuda)."""

BUILD_INFO = "BUILD_INFO.json"

_HERE = Path(__file__).resolve().parent
_RUNNER_SOURCE = _HERE / "runner" / "edgecc_run.cc"
_SHIM = _HERE / "shim"

# Arches with an apache-tvm wheel on PyPI: the pip platform tag to fetch it with.
_WHEEL_PLATFORM = {"x86_64": "manylinux_2_28_x86_64", "aarch64": "manylinux_2_28_aarch64"}
# Libraries taken from the TVM wheel when present (extra: contrib kernels such as
# sort/random; cuda: the CUDA device API, loaded by the runner on --device cuda).
_WHEEL_TVM_LIBS = ("libtvm_runtime.so", "libtvm_runtime_extra.so", "libtvm_runtime_cuda.so")

# TVM runtime sources compiled for arches without a wheel: what loading and
# running a Relax VM executable on the CPU needs, plus the sort/random contrib
# kernels that CPU lowering of sort/topk/random ops calls.
_RUNTIME_SOURCES = (
    "builtin_fp16.cc",
    "const_loader_module.cc",
    "cpu_device_api.cc",
    "device_api.cc",
    "file_utils.cc",
    "logging.cc",
    "module.cc",
    "tensor.cc",
    "thread_pool.cc",
    "threading_backend.cc",
    "timer.cc",
    "workspace_pool.cc",
    "memory/memory_manager.cc",
    "vm/builtin.cc",
    "vm/bytecode.cc",
    "vm/executable.cc",
    "vm/vm.cc",
    "extra/contrib/sort/sort.cc",
    "extra/contrib/random/random.cc",
)

Log = Callable[[str], None]


# ------------------------------------------------------------------ locations


def host_arch() -> str:
    """Return this machine's arch in edgecc's spelling (``x86_64``, ``aarch64``, ...)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def cache_root() -> Path:
    """Return edgecc's cache folder.

    ``$EDGECC_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/edgecc``, else
    ``~/.cache/edgecc``.
    """
    if os.environ.get("EDGECC_CACHE_DIR"):
        return Path(os.environ["EDGECC_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "edgecc"
    return Path.home() / ".cache" / "edgecc"


def _versions() -> tuple[str, str]:
    try:
        return (importlib.metadata.version("apache-tvm"),
                importlib.metadata.version("apache-tvm-ffi"))
    except importlib.metadata.PackageNotFoundError as err:
        raise RuntimeBuildError(f"{err.name} is not installed; install edgecc's dependencies "
                                "(pip install apache-tvm apache-tvm-ffi)") from err


def runtime_key(arch: str) -> str:
    """Return the cache folder name for ``arch``: ``<arch>-tvm<ver>-ffi<ver>``."""
    tvm_version, ffi_version = _versions()
    return f"{arch}-tvm{tvm_version}-ffi{ffi_version}"


def _package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeBuildError(f"Python package {name!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _source_hash() -> str:
    """Hash of edgecc's own inputs to the build (runner + shim), to notice edits."""
    digest = hashlib.sha256()
    files = [_RUNNER_SOURCE, *sorted(p for p in _SHIM.rglob("*") if p.is_file()),
             Path(__file__)]
    for path in files:
        digest.update(str(path.relative_to(_HERE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------ toolchain


def _compiler(arch: str) -> str:
    """The g++ that targets ``arch``; raises ToolchainError naming the package."""
    return find_cxx(arch, f"building the {arch} runtime")


class _Builder:
    """Runs compile jobs on all cores and keeps one log file."""

    def __init__(self, log_path: Path, log: Log):
        self.log_path = log_path
        self.log = log
        self._lock = threading.Lock()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(log_path, "w", encoding="utf-8")

    def close(self) -> None:
        self._file.close()

    def run(self, argv: list[str], what: str, cwd: Path | None = None) -> None:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace")
        with self._lock:
            self._file.write("$ " + " ".join(argv) + "\n" + proc.stdout + proc.stderr)
            self._file.flush()
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise RuntimeBuildError(f"{what} failed (exit {proc.returncode}); full log: "
                                    f"{self.log_path}\n{tail}")

    def run_all(self, jobs: list[tuple[list[str], str]]) -> None:
        """Run independent jobs in parallel; the first failure is raised."""
        done = [0]

        def one(job: tuple[list[str], str]) -> None:
            self.run(*job)
            with self._lock:
                done[0] += 1
                if done[0] % 8 == 0 or done[0] == len(jobs):
                    self.log(f"  compiled {done[0]}/{len(jobs)}")

        workers = max(1, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(one, job) for job in jobs]
            for future in as_completed(futures):
                if future.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise future.exception()


_CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-DNDEBUG", "-DTVM_FFI_CMAKE_LITTLE_ENDIAN=1"]


def _include_flags() -> list[str]:
    """Header folders from the installed wheels (arch independent) plus the shim."""
    tvm_dir, ffi_dir = _package_dir("tvm"), _package_dir("tvm_ffi")
    return [f"-I{_SHIM / 'include'}", f"-I{tvm_dir / 'include'}", f"-I{ffi_dir / 'include'}",
            f"-I{ffi_dir / '3rdparty' / 'dlpack' / 'include'}"]


def _runner_compile_job(cxx: str, out_obj: Path) -> tuple[list[str], str]:
    return ([cxx, *_CXXFLAGS, *_include_flags(), "-c", str(_RUNNER_SOURCE), "-o", str(out_obj)],
            "compiling the runner (edgecc_run.cc)")


def _runner_link_job(cxx: str, obj: Path, lib_dir: Path) -> tuple[list[str], str]:
    return ([cxx, str(obj), "-o", str(lib_dir / RUNNER), f"-L{lib_dir}", "-ltvm_runtime",
             "-ltvm_ffi", "-ldl", "-pthread", "-Wl,-rpath,$ORIGIN", "-Wl,--disable-new-dtags"],
            "linking the runner")


def build_runner(arch: str, lib_dir: Path, *, log: Log | None = None,
                 log_path: Path | None = None) -> Path:
    """Compile ``edgecc-run`` for ``arch`` into ``lib_dir``.

    ``lib_dir`` must already hold ``libtvm_runtime.so`` and ``libtvm_ffi.so``
    for ``arch``; the runner links against them and finds them at run time
    beside itself (rpath ``$ORIGIN``).

    Parameters
    ----------
    arch : str
        One of :data:`ARCHES`.
    lib_dir : pathlib.Path
        Folder with the arch's TVM libraries; the runner is written there.
    log : callable, optional
        Receives progress lines.
    log_path : pathlib.Path, optional
        Where the compiler output goes (default ``lib_dir/../<arch>-runner.log``).

    Returns
    -------
    pathlib.Path
        The runner executable.
    """
    log = log or (lambda line: None)
    lib_dir = Path(lib_dir)
    cxx = _compiler(arch)
    builder = _Builder(Path(log_path) if log_path else lib_dir.parent / f"{arch}-runner.log", log)
    try:
        with tempfile.TemporaryDirectory(prefix="edgecc-runner-") as work:
            obj = Path(work) / "edgecc_run.o"
            builder.run(*_runner_compile_job(cxx, obj))
            builder.run(*_runner_link_job(cxx, obj, lib_dir))
    finally:
        builder.close()
    return lib_dir / RUNNER


# ------------------------------------------------------------------ the three ways


def _copy_installed_libs(out: Path) -> None:
    """Host arch: the libraries of the installed wheels."""
    tvm_lib = _package_dir("tvm") / "lib"
    for name in _WHEEL_TVM_LIBS:
        if (tvm_lib / name).exists():
            shutil.copy2(tvm_lib / name, out / name)
    shutil.copy2(_package_dir("tvm_ffi") / "lib" / "libtvm_ffi.so", out / "libtvm_ffi.so")


def _download_wheel_libs(arch: str, out: Path, builder: _Builder, log: Log) -> None:
    """Another arch with wheels on PyPI: fetch them and take their libraries."""
    tvm_version, ffi_version = _versions()
    if importlib.util.find_spec("pip") is None:
        raise RuntimeBuildError(f"pip is needed to fetch the {arch} TVM wheels but this Python "
                                f"has none; run: {sys.executable} -m ensurepip")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="edgecc-wheels-") as work:
        log(f"  downloading apache-tvm {tvm_version} and apache-tvm-ffi {ffi_version} "
            f"wheels for {arch}")
        builder.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                     "--platform", _WHEEL_PLATFORM[arch], "--python-version", py,
                     "--disable-pip-version-check", "--dest", work,
                     f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}"],
                    f"downloading the {arch} TVM wheels (needs access to PyPI)")
        wanted = {f"tvm/lib/{name}": name for name in _WHEEL_TVM_LIBS}
        wanted["tvm_ffi/lib/libtvm_ffi.so"] = "libtvm_ffi.so"
        for wheel in Path(work).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.namelist():
                    if member in wanted:
                        target = out / wanted[member]
                        with zf.open(member) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                        target.chmod(0o755)
    missing = [name for name in LIBRARIES if not (out / name).exists()]
    if missing:
        raise RuntimeBuildError(f"the {arch} wheels did not contain {', '.join(missing)}")


def _ffi_sources(ffi_dir: Path) -> list[str]:
    """tvm-ffi's library sources, as listed in the CMakeLists.txt its wheel ships."""
    text = (ffi_dir / "CMakeLists.txt").read_text()
    sources: list[str] = []
    for var in ("_tvm_ffi_objs_sources", "_tvm_ffi_extra_objs_sources"):
        match = re.search(r"set\(\s*" + var + r"\s(.*?)\)", text, re.S)
        if match:
            sources += re.findall(r"src/ffi/[\w/]+\.cc", match.group(1))
    if not sources:  # layout changed: every source but the testing library
        sources = sorted(str(p.relative_to(ffi_dir)) for p in (ffi_dir / "src" / "ffi").rglob("*.cc")
                         if "testing" not in p.parts)
    return sources


def _compile_from_source(arch: str, out: Path, builder: _Builder, log: Log) -> None:
    """No wheel for the arch: build tvm-ffi, the TVM runtime and the runner from source."""
    cxx = _compiler(arch)
    tvm_dir, ffi_dir = _package_dir("tvm"), _package_dir("tvm_ffi")
    with tempfile.TemporaryDirectory(prefix="edgecc-rtbuild-") as work_name:
        work = Path(work_name)
        # The runtime sources include some internal headers by relative path
        # (../support/x.h, 3rdparty/compiler-rt/...): lay them out as TVM's tree.
        tree = work / "tvm"
        shutil.copytree(tvm_dir / "src" / "runtime", tree / "src" / "runtime")
        shutil.copytree(_SHIM / "src" / "support", tree / "src" / "support")
        (tree / "3rdparty" / "compiler-rt").mkdir(parents=True)
        shutil.copy2(_SHIM / "include" / "builtin_fp16.h", tree / "3rdparty" / "compiler-rt")

        includes = _include_flags()
        jobs: list[tuple[list[str], str]] = []
        ffi_objs, rt_objs = [], []
        ffi_flags = [*_CXXFLAGS, "-fvisibility=hidden", "-fvisibility-inlines-hidden",
                     "-DTVM_FFI_USE_LIBBACKTRACE=0", "-DTVM_FFI_BACKTRACE_ON_SEGFAULT=1",
                     f"-I{ffi_dir / 'include'}", f"-I{ffi_dir / '3rdparty' / 'dlpack' / 'include'}"]
        for rel in _ffi_sources(ffi_dir):
            obj = work / "obj" / "ffi" / (rel.replace("/", "_") + ".o")
            ffi_objs.append(obj)
            jobs.append(([cxx, *ffi_flags, "-c", str(ffi_dir / rel), "-o", str(obj)],
                         f"compiling tvm-ffi {rel}"))
        rt_flags = [*_CXXFLAGS, "-fvisibility-inlines-hidden", *includes]
        for rel in _RUNTIME_SOURCES:
            src = tree / "src" / "runtime" / rel
            obj = work / "obj" / "runtime" / (rel.replace("/", "_") + ".o")
            rt_objs.append(obj)
            jobs.append(([cxx, *rt_flags, "-c", str(src), "-o", str(obj)],
                         f"compiling TVM runtime {rel}"))
        if arch == "riscv64":
            # fp16 helpers with the hard-float calling convention (see the file).
            src = _SHIM / "src" / "riscv_fp16_abi.cc"
            obj = work / "obj" / "runtime" / "edgecc_riscv_fp16_abi.o"
            rt_objs.append(obj)
            jobs.append(([cxx, *rt_flags, "-c", str(src), "-o", str(obj)],
                         "compiling edgecc's riscv_fp16_abi.cc"))
        runner_obj = work / "obj" / "edgecc_run.o"
        jobs.append(_runner_compile_job(cxx, runner_obj))
        (work / "obj" / "ffi").mkdir(parents=True)
        (work / "obj" / "runtime").mkdir(parents=True)
        # Biggest files first keeps both cores busy to the end.
        jobs.sort(key=lambda job: -Path(job[0][-3]).stat().st_size)
        log(f"  compiling {len(jobs)} files with {Path(cxx).name} on {os.cpu_count()} cores")
        builder.run_all(jobs)

        libs = ["-ldl", "-pthread", "-Wl,--as-needed", "-latomic", "-Wl,--no-as-needed"]
        builder.run([cxx, "-shared", "-Wl,-soname,libtvm_ffi.so", "-o", str(out / "libtvm_ffi.so"),
                     *map(str, ffi_objs), "-Wl,--exclude-libs,ALL", *libs], "linking libtvm_ffi.so")
        builder.run([cxx, "-shared", "-Wl,-soname,libtvm_runtime.so",
                     "-o", str(out / "libtvm_runtime.so"), *map(str, rt_objs), f"-L{out}",
                     "-ltvm_ffi", "-Wl,--no-undefined", *libs, "-Wl,-rpath,$ORIGIN"],
                    "linking libtvm_runtime.so")
        builder.run(*_runner_link_job(cxx, runner_obj, out))


# ------------------------------------------------------------------ the cache


def _is_complete(folder: Path, want: dict) -> bool:
    try:
        info = json.loads((folder / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return False
    return (all((folder / name).is_file() for name in (*LIBRARIES, RUNNER))
            and all(info.get(k) == v for k, v in want.items()))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_runtime(arch: str, *, log: Log | None = None) -> Path:
    """Return the runtime folder for ``arch``, building it on first use.

    The folder holds ``libtvm_runtime.so``, ``libtvm_ffi.so`` and the
    ``edgecc-run`` executable built for ``arch`` at exactly the installed
    apache-tvm / apache-tvm-ffi versions (plus ``libtvm_runtime_extra.so`` and
    ``libtvm_runtime_cuda.so`` where the arch's TVM wheel has them, and
    ``BUILD_INFO.json``). It is cached in ``<cache>/runtime/<arch>-tvm<ver>-ffi<ver>/``
    (see :func:`cache_root`). A build goes to a temporary folder that is
    renamed into place when complete, so the cache never holds half a build;
    a file lock keeps two processes from building the same folder at once.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHES`.
    log : callable, optional
        Receives one-line progress messages (only when something is built).

    Returns
    -------
    pathlib.Path
        The runtime folder. Copy it next to a model as ``runtime/``.

    Raises
    ------
    ToolchainError
        The arch's cross compiler is not installed (the message names the
        Debian package).
    RuntimeBuildError
        A download, compile or link step failed (the message has the tail of
        the output and the path of the full log).
    """
    if arch not in ARCHES:
        raise UserInputError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHES)}")
    log = log or (lambda line: None)
    key = runtime_key(arch)
    root = cache_root() / "runtime"
    final = root / key
    want = {"arch": arch, "key": key, "source_hash": _source_hash()}
    if _is_complete(final, want):
        return final

    cxx = _compiler(arch)  # fail early, before taking the lock, when it is missing
    with _file_lock(root / f"{key}.lock"):
        if _is_complete(final, want):  # another process built it meanwhile
            return final
        for leftover in root.glob(f".{key}.*"):  # from a build that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        how = ("installed wheels" if arch == host_arch()
               else "PyPI wheels" if arch in _WHEEL_PLATFORM else "source")
        log(f"building the TVM runtime for {arch} from {how} (once; cached in {final})")
        start = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        builder = _Builder(root / f"{key}.build.log", log)
        try:
            if arch == host_arch():
                _copy_installed_libs(staging)
                builder.run(*_runner_compile_job(cxx, staging / "edgecc_run.o"))
                builder.run(*_runner_link_job(cxx, staging / "edgecc_run.o", staging))
                (staging / "edgecc_run.o").unlink()
            elif arch in _WHEEL_PLATFORM:
                _download_wheel_libs(arch, staging, builder, log)
                builder.run(*_runner_compile_job(cxx, staging / "edgecc_run.o"))
                builder.run(*_runner_link_job(cxx, staging / "edgecc_run.o", staging))
                (staging / "edgecc_run.o").unlink()
            else:
                _compile_from_source(arch, staging, builder, log)
            seconds = time.perf_counter() - start
            info = {**want, "tvm": _versions()[0], "tvm_ffi": _versions()[1], "from": how,
                    "compiler": Path(cxx).name, "build_seconds": round(seconds, 1)}
            (staging / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
            os.chmod(staging, 0o755)
            if final.exists():  # stale (other edgecc sources): move it aside, then drop it
                old = Path(tempfile.mkdtemp(prefix=f".{key}.old.", dir=root))
                os.rename(final, old / "dir")
                shutil.rmtree(old, ignore_errors=True)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            builder.close()
        log(f"built the {arch} runtime in {seconds:.0f}s")
    return final
