"""Build the deployment zip of the ``chunk_read`` function.

The zip holds ``lambda_function.py`` (handler ``lambda_function.lambda_handler``), the core
package ``hsds_backends`` (without its ``testing`` helpers), this package, and the core's
runtime dependencies as manylinux wheels for the chosen architecture and Python, fetched by
``pip install --only-binary=:all: --platform … --python-version … --target``. The Lambda
runtime provides ``awslambdaric``; ``click``, ``tqdm`` and ``pyyaml`` serve only the command
line and config files and are left out.

Wheels are downloaded once into a cache folder (default ``<cwd>/.cache/lambda-wheels``) and
installed from it offline afterwards. The zip is deterministic (sorted entries, fixed
timestamps), so an unchanged build has an unchanged ``CodeSha256`` and ``deploy`` uploads
nothing. Size limits (docs/aws-lambda.md §1.4): 50 MB zipped for a direct upload, 250 MB
unzipped; botocore's service models other than S3/STS and the test suites of numpy are
pruned to stay well inside them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path
from typing import Final

from hsds_backends.errors import HsdsBackendsError

__all__ = ["MAX_UNZIPPED_BYTES", "MAX_ZIPPED_BYTES", "RUNTIME_GLIBC", "BuildError", "BuildResult", "build_zip", "requirements"]

#: Direct-upload limit of a zip (docs/aws-lambda.md §1.4).
MAX_ZIPPED_BYTES: Final = 50 * 1024 * 1024
#: Unzipped limit, layers included (docs/aws-lambda.md §1.4).
MAX_UNZIPPED_BYTES: Final = 250 * 1024 * 1024
#: glibc of each Python runtime's OS: python3.9–3.11 run on Amazon Linux 2, 3.12+ on AL2023.
RUNTIME_GLIBC: Final = {"3.9": 26, "3.10": 26, "3.11": 26, "3.12": 34, "3.13": 34, "3.14": 34}
#: Core dependencies the function does not import.
_SKIP: Final = frozenset({"click", "tqdm", "pyyaml"})
#: What the function needs beyond the core: SIMD base64 for the answers.
_EXTRA: Final = ("pybase64>=1.3",)
_ARCH: Final = {"x86_64": "x86_64", "arm64": "aarch64"}
_BOTOCORE_KEEP: Final = frozenset({"s3", "sts"})
_EPOCH: Final = (1980, 1, 1, 0, 0, 0)
#: This package's folder, copied into the zip whole (the function needs handler, wire and client).
_PACKAGE_DIR: Final = Path(__file__).resolve().parent

LAMBDA_FUNCTION_PY: Final = '''"""Entry module of the chunk_read function (handler lambda_function.lambda_handler)."""

from hsds_backends_lambda.handler import lambda_handler

__all__ = ["lambda_handler"]
'''


class BuildError(HsdsBackendsError):
    """The deployment zip cannot be built or breaks Lambda's limits."""


@dataclass
class BuildResult:
    """What :func:`build_zip` made."""

    path: Path
    zipped_bytes: int
    unzipped_bytes: int
    files: int
    code_sha256: str
    """base64 SHA-256 of the zip: what Lambda reports as ``CodeSha256``."""
    arch: str
    python: str
    packages: dict[str, str] = field(default_factory=dict)
    """Distribution → version of the bundled wheels."""

    def summary(self) -> str:
        return (
            f"{self.path}: {self.zipped_bytes / 2**20:.1f} MB zipped (limit {MAX_ZIPPED_BYTES / 2**20:.0f} MB), "
            f"{self.unzipped_bytes / 2**20:.1f} MB unzipped (limit {MAX_UNZIPPED_BYTES / 2**20:.0f} MB), {self.files} files, "
            f"{self.arch} python{self.python}, CodeSha256 {self.code_sha256}"
        )


def requirements(arch: str = "x86_64", python: str = "3.11") -> list[str]:
    """Return the core's runtime requirements for the function on ``arch``/``python`` (markers evaluated)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    try:
        reqs = requires("hsds-backends") or []
    except PackageNotFoundError as exc:
        raise BuildError("the core distribution hsds-backends is not installed; run: pip install -e <repo>") from exc
    env: dict[str, str] = {
        **default_environment(),  # type: ignore[dict-item]
        "platform_machine": _ARCH[arch],
        "sys_platform": "linux",
        "platform_system": "Linux",
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    out = []
    for text in reqs:
        r = Requirement(text)
        if r.marker is not None and not r.marker.evaluate({**env, "extra": ""}):
            continue
        if r.name.lower() in _SKIP:
            continue
        r.marker = None
        out.append(str(r))
    return out + list(_EXTRA)


def _platforms(arch: str, python: str) -> list[str]:
    machine = _ARCH[arch]
    glibc = RUNTIME_GLIBC.get(python, 26)
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc, 16, -1)] + [f"manylinux2014_{machine}"]
    if machine == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False)


def _install_deps(target: Path, reqs: list[str], arch: str, python: str, cache: Path, echo: object) -> None:
    abi = "cp" + python.replace(".", "")
    plat: list[str] = []
    for p in _platforms(arch, python):
        plat += ["--platform", p]
    common = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python, "--abi", abi, *plat]
    install = ["install", "--quiet", "--no-compile", "--target", str(target), "--no-index", "--find-links", str(cache), *common, *reqs]
    r = _pip(install)
    if r.returncode != 0:  # not all in the cache yet: download (the only network step), then install offline
        if callable(echo):
            echo(f"downloading wheels for {arch} python{python} into {cache} ...")
        d = _pip(["download", "--quiet", "--dest", str(cache), "--find-links", str(cache), *common, *reqs])
        if d.returncode != 0:
            raise BuildError(
                f"pip could not download manylinux wheels for {arch} python{python} ({' '.join(reqs)}):\n{d.stderr.strip()[-2000:]}\n"
                "check network access to the package index, or pick another --arch/--python"
            )
        r = _pip(install)
        if r.returncode != 0:
            raise BuildError(f"pip could not install the downloaded wheels into {target}:\n{r.stderr.strip()[-2000:]}")
    shutil.rmtree(target / "bin", ignore_errors=True)


def _prune(root: Path) -> None:
    for p in sorted(root.rglob("__pycache__"), reverse=True):
        shutil.rmtree(p, ignore_errors=True)
    for pkg in ("numpy", "numcodecs", "lz4"):
        for name in ("tests", "testing/tests"):
            shutil.rmtree(root / pkg / name, ignore_errors=True)
    data = root / "botocore" / "data"
    if data.is_dir():
        for child in data.iterdir():
            if child.is_dir() and child.name not in _BOTOCORE_KEEP:
                shutil.rmtree(child)
    for p in root.rglob("*.pyc"):
        p.unlink()


def _copy_package(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(src)
        out = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
        out |= {n for n in names if str(rel / n) in skip}
        return out

    shutil.copytree(src, dst, ignore=ignore)


def _versions(root: Path) -> dict[str, str]:
    out = {}
    for d in root.glob("*.dist-info"):
        name, _, ver = d.name[: -len(".dist-info")].partition("-")
        out[name] = ver
    return dict(sorted(out.items()))


def _write_zip(root: Path, out: Path) -> tuple[int, int]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    unzipped = 0
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for p in files:
            info = zipfile.ZipInfo(p.relative_to(root).as_posix(), date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if os.access(p, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            data = p.read_bytes()
            unzipped += len(data)
            zf.writestr(info, data)
    os.replace(tmp, out)
    return len(files), unzipped


def build_zip(
    out: str | os.PathLike[str],
    *,
    arch: str = "x86_64",
    python: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    echo: object = None,
) -> BuildResult:
    """Build the deployment zip at ``out`` and check it against Lambda's size limits.

    Parameters
    ----------
    out
        Zip path to write (its folder is created).
    arch
        ``x86_64`` or ``arm64``.
    python
        Runtime version, ``"3.11"`` …; default: this interpreter's.
    cache_dir
        Wheel cache; default ``./.cache/lambda-wheels``.
    echo
        Progress callback (``print``-like), or ``None``.

    Raises
    ------
    BuildError
        Unknown arch, wheels not available, or the zip is over 50 MB zipped / 250 MB unzipped.
    """
    if arch not in _ARCH:
        raise BuildError(f"unknown architecture {arch!r}; use one of {sorted(_ARCH)}")
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    if python not in RUNTIME_GLIBC:
        raise BuildError(f"no Lambda Python runtime {python!r}; use one of {sorted(RUNTIME_GLIBC)}")
    out = Path(out)
    cache = Path(cache_dir) if cache_dir else Path.cwd() / ".cache" / "lambda-wheels"
    cache = cache / f"{arch}-cp{python.replace('.', '')}"
    cache.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    import hsds_backends

    with tempfile.TemporaryDirectory(prefix="chunk_read-") as tmp:
        root = Path(tmp) / "pkg"
        root.mkdir()
        _install_deps(root, requirements(arch, python), arch, python, cache, echo)
        _prune(root)
        _copy_package(Path(hsds_backends.__file__).parent, root / "hsds_backends", skip=("testing",))
        _copy_package(_PACKAGE_DIR, root / "hsds_backends_lambda")
        (root / "lambda_function.py").write_text(LAMBDA_FUNCTION_PY)
        versions = _versions(root)
        files, unzipped = _write_zip(root, out)
    zipped = out.stat().st_size
    digest = base64.b64encode(hashlib.sha256(out.read_bytes()).digest()).decode()
    result = BuildResult(out, zipped, unzipped, files, digest, arch, python, versions)
    if unzipped > MAX_UNZIPPED_BYTES:
        raise BuildError(f"{out} unpacks to {unzipped} bytes, over Lambda's {MAX_UNZIPPED_BYTES}-byte limit; use a container image")
    if zipped > MAX_ZIPPED_BYTES:
        raise BuildError(
            f"{out} is {zipped} bytes zipped, over the {MAX_ZIPPED_BYTES}-byte limit of a direct upload; upload it through S3"
        )
    return result
