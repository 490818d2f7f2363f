"""A bundle of wxens's dependencies for a GPU machine that has its own PyTorch and CUDA, another
Python, and no package index: one `.tar.xz` of the pure-Python and compiled packages that
`benchmarks/gpu_suite.py` imports beyond PyTorch and the scientific stack such an image
usually has (numpy, scipy, pandas, matplotlib, rich, typer, pyyaml, safetensors).

    python benchmarks/offline_bundle.py [--python 3.12] [--out bundle.tar.xz]

Here: it downloads the wheels of the versions installed in this environment for `--python`
(manylinux x86-64), installs them into a folder, drops their tests and strips their shared
libraries' symbols, and packs the folder (about 5.5 MB, so that it travels with a
working tree). There, from the repository root:

    mkdir -p /tmp/site && tar -C /tmp/site -xJf bundle.tar.xz && export PYTHONPATH=/tmp/site
    python3 -m pip install --no-deps --no-build-isolation --no-index --ignore-requires-python -e .
    python3 benchmarks/gpu_suite.py --out gpu_suite.json

torch-harmonics' compiled kernels (DISCO convolutions and attention, which wxens does not use)
are built against one PyTorch version and fail to load under another, and the package imports
them unconditionally. The bundle therefore replaces its two helper extensions by pure-Python
ones that report no kernels, and makes the package's top level and its example models import
without those layers; its spherical harmonic transforms and SFNO, all that wxens uses, are
plain PyTorch.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = (
    "torch-harmonics",
    "zarr",
    "numcodecs",
    "donfig",
    "google-crc32c",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "dask",
    "partd",
    "locket",
    "xarray",
    "shapely",
)
"""What `import wxens` and the GPU suite need beyond PyTorch and a usual scientific image."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64")
NO_KERNELS = """def optimized_kernels_is_available():
    return False


def cuda_kernels_is_available():
    return False
"""
"""torch-harmonics' `disco_helpers` and `attention_helpers`, reporting no compiled kernels."""
OPTIONAL_IMPORTS = {
    "torch_harmonics/__init__.py": (
        "from .attention import AttentionS2, NeighborhoodAttentionS2",
        "from .disco import DiscreteContinuousConvS2, DiscreteContinuousConvTransposeS2",
    ),
    "torch_harmonics/examples/models/__init__.py": (
        "from .lsno import LocalSphericalNeuralOperator",
        "from .s2segformer import SphericalSegformer",
        "from .s2transformer import SphericalTransformer",
        "from .s2unet import SphericalUNet",
    ),
}
"""The imports of torch-harmonics' kernel-backed layers, made optional in the bundle."""


def download(folder: Path, python: str) -> list[Path]:
    """The wheels of this environment's versions of `PACKAGES` for `python`, into `folder`."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in PACKAGES]
    platforms = [argument for p in PLATFORMS for argument in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python, "--implementation", "cp", *platforms]
    subprocess.run([*command, "--dest", str(folder), *pins], check=True)
    return sorted(folder.glob("*.whl"))


def install(wheels: list[Path], site: Path, python: str) -> None:
    """Unpack `wheels` into `site` as pip installs them for `python`."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
    command += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    platforms = [argument for p in PLATFORMS for argument in ("--platform", p)]
    subprocess.run([*command, *platforms, "--target", str(site), *map(str, wheels)], check=True)


def without_kernels(site: Path) -> None:
    """torch-harmonics importable without its compiled kernels (see the module docstring)."""
    for compiled in [*site.glob("*_helpers*.so"), *site.glob("torch_harmonics/*/_C*.so")]:
        compiled.unlink()
    for helpers in ("disco_helpers", "attention_helpers"):
        (site / f"{helpers}.py").write_text(NO_KERNELS)
    for relative, lines in OPTIONAL_IMPORTS.items():
        path = site / relative
        text = path.read_text()
        for line in lines:
            if f"{line}\n" not in text:
                raise SystemExit(f"offline_bundle: {relative} no longer has {line!r}")
            optional = f"try:\n    {line}\nexcept ImportError:  # no compiled kernels\n    pass\n"
            text = text.replace(f"{line}\n", optional)
        path.write_text(text)


def slim(site: Path) -> None:
    """Drop tests and bytecode; strip shared libraries' symbols where `strip` exists."""
    for folder in [*site.rglob("tests"), *site.rglob("__pycache__")]:
        shutil.rmtree(folder, ignore_errors=True)
    if strip := shutil.which("strip"):
        libraries = [str(p) for p in site.rglob("*.so*") if p.is_file()]
        subprocess.run([strip, "--strip-unneeded", *libraries], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.12", help="the other machine's Python, X.Y")
    parser.add_argument("--out", type=Path, default=Path("bundle.tar.xz"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wxens-bundle-") as scratch:
        wheels = download(Path(scratch) / "wheels", args.python)
        site = Path(scratch) / "site"
        install(wheels, site, args.python)
        without_kernels(site)
        slim(site)
        with tarfile.open(args.out, "w:xz") as bundle:
            for path in sorted(site.iterdir()):
                bundle.add(path, arcname=path.name)
    size = args.out.stat().st_size / 1e6
    print(f"{args.out}: {len(wheels)} packages for Python {args.python}, {size:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
