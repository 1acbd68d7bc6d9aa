"""Build step of `pip install .`: the gRPC stubs are generated from proto/ (grpcio-tools, a
build requirement in pyproject.toml) before the packages are collected, so an install from a
clean source tree has importable `heteronn.v1.*_pb2*` modules. Everything else is in
pyproject.toml."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_stubs() -> None:
    """protoc for every proto/heteronn/v1/*.proto: *_pb2.py, *_pb2.pyi, *_pb2_grpc.py."""
    import grpc_tools
    from grpc_tools import protoc

    proto = ROOT / "proto"
    sources = sorted(str(p) for p in (proto / "heteronn" / "v1").glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    out = [f"--{kind}_out={proto}" for kind in ("python", "pyi", "grpc_python")]
    if protoc.main(["protoc", f"-I{proto}", f"-I{include}", *out, *sources]) != 0:
        raise RuntimeError(f"protoc failed on {sources}")


class BuildPyWithStubs(build_py):
    """build_py that first generates the stubs."""

    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
