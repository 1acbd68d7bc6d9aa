"""A party's model bundle: ``<workdir>/<node_id>/<task_id>/model/`` with `manifest.json` and
the party's models as TorchScript (loads without the user's classes) plus state dicts.

Integrity: the manifest lists the sha256 of every file; they are checked before anything is
loaded. Agreement: every party's manifest (without its agreement fields) has a digest; the
parties exchange digests when the task finishes and each records all of them (`parties`) and
`model_id`, the digest of that map. Two bundles belong to one model exactly when their
model ids are equal; `differences` says what differs when they are not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from party_node.errors import BundleError

FORMAT = "heteronn-model/1"
MANIFEST = "manifest.json"
#: A manifest is a few kB; anything bigger is not one of ours.
MAX_MANIFEST_BYTES = 1 << 20
#: Fields added by the agreement; a party's digest covers everything else.
AGREEMENT_FIELDS = ("parties", "model_id")
#: Fields two bundles of one model must share, compared to explain a mismatch.
SHARED_FIELDS = ("task_id", "final_round", "mode", "participants")


def canonical(obj: Any) -> bytes:
    """The bytes every party hashes for the same JSON value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def party_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of a manifest without its agreement fields: names this party's bundle."""
    core = {k: v for k, v in manifest.items() if k not in AGREEMENT_FIELDS}
    return hashlib.sha256(canonical(core)).hexdigest()


def model_id_of(parties: Mapping[str, str]) -> str:
    """The model id: sha256 over every party's digest, keyed by node id."""
    return hashlib.sha256(canonical(dict(parties))).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def heteronn_version() -> str:
    try:
        return metadata.version("heteronn")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def short(model_id: str) -> str:
    return model_id[:12]


class BundleWriter:
    """Writes a bundle into a staging folder beside `path`; `commit` moves it into place,
    so a crash leaves the previous bundle or the new one, never half of one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=".model-"))
        self.manifest: dict[str, Any] = {}

    def save_state(self, name: str, state: Mapping[str, Any]) -> str:
        """A state dict (tensors and plain data: loads with weights_only=True)."""
        torch.save(dict(state), self.staging / name)
        return name

    def save_script(self, name: str, module: torch.jit.ScriptModule) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript: see docs/inference.md
            torch.jit.save(module, str(self.staging / name))
        return name

    def seal(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest: `fields` plus format, version, time and every file's sha256."""
        files = {
            p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in sorted(self.staging.iterdir())
            if p.is_file()
        }
        self.manifest = {
            "format": FORMAT,
            "heteronn_version": heteronn_version(),
            "created_unix": int(time.time()),
            **fields,
            "files": files,
        }
        return self.manifest

    def commit(self, parties: Mapping[str, str]) -> Bundle:
        """Record the agreed digests and the model id, then move the bundle into place."""
        manifest = {**self.manifest, "parties": dict(sorted(parties.items()))}
        manifest["model_id"] = model_id_of(manifest["parties"])
        data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        with (self.staging / MANIFEST).open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}-old-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.staging, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return Bundle(self.path, manifest)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: every file matches its sha256, the agreement is consistent."""

    path: Path
    manifest: dict[str, Any]

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def node_id(self) -> str:
        return str(self.manifest["node_id"])

    @property
    def role(self) -> str:
        return str(self.manifest["role"])

    @property
    def mode(self) -> str:
        return str(self.manifest["mode"])

    @property
    def feature_key(self) -> str:
        return str(self.manifest["feature_key"])

    @property
    def participants(self) -> list[dict[str, str]]:
        return list(self.manifest["participants"])

    @property
    def host(self) -> str:
        return next(p["node_id"] for p in self.participants if p["role"] == "host")

    @property
    def collaborators(self) -> list[dict[str, str]]:
        return [p for p in self.participants if p["role"] == "collaborator"]

    def describe(self) -> str:
        m = self.manifest
        return (
            f"model {short(self.model_id)} (task '{m['task_id']}', round {m['final_round']}, "
            f"{m['mode']})"
        )

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.path} lists no file '{name}'")
        return self.path / name

    def load_state(self, name: str) -> dict[str, Any]:
        # A local file, checked against the manifest; weights_only: tensors and plain data.
        return torch.load(self.file(name), map_location="cpu", weights_only=True)

    def load_script(self, name: str) -> torch.jit.ScriptModule:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(self.file(name)), map_location="cpu")
        module.eval()
        return module


def read_bundle(path: Path, role: str | None = None) -> Bundle:
    """Load and verify the bundle at `path` (a `model/` folder, or the task's output folder
    that holds one). Raises BundleError naming the problem and the fix."""
    path = Path(path)
    if not (path / MANIFEST).is_file() and (path / "model" / MANIFEST).is_file():
        path = path / "model"
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"no model bundle at {path}: {MANIFEST} is missing; a finished task writes one to "
            "<workdir>/<node_id>/<task_id>/model/"
        )
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{manifest_path} has format {got!r}; this heteronn reads {FORMAT!r}")
    missing = [k for k in ("node_id", "role", "files", *SHARED_FIELDS, *AGREEMENT_FIELDS)
               if k not in manifest]
    if missing:
        raise BundleError(
            f"{manifest_path} lacks {', '.join(missing)}; the task that wrote it did not finish "
            "its model agreement — train again"
        )
    if role is not None and manifest["role"] != role:
        raise BundleError(
            f"the bundle at {path} is the {manifest['role']} '{manifest['node_id']}''s; this "
            f"scheduler is a {role} — point it at its own party's bundle"
        )
    _check_files(path, manifest)
    own = party_digest(manifest)
    parties = manifest["parties"]
    if parties.get(manifest["node_id"]) != own or manifest["model_id"] != model_id_of(parties):
        raise BundleError(
            f"{manifest_path} was edited after the parties agreed on it (its digest or model id "
            "no longer matches); restore the bundle the task wrote"
        )
    return Bundle(path, manifest)


def _check_files(path: Path, manifest: Mapping[str, Any]) -> None:
    for name, entry in manifest["files"].items():
        file = path / name
        if Path(name).name != name or name == MANIFEST:
            raise BundleError(f"{path / MANIFEST} lists a file named {name!r}; refused")
        if not file.is_file():
            raise BundleError(f"bundle file {file} is missing; copy the whole model/ folder")
        digest = file_sha256(file)
        if digest != entry.get("sha256"):
            raise BundleError(
                f"bundle file {file} has sha256 {digest[:16]}… but the manifest says "
                f"{str(entry.get('sha256'))[:16]}…; it was modified or copied incompletely — "
                "restore the bundle the task wrote"
            )


def differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """What differs between two parties' manifest summaries (see `summary`), for the
    message that refuses mismatched bundles."""
    out = []
    for key in SHARED_FIELDS:
        if mine.get(key) != theirs.get(key):
            out.append(f"{key} {_show(mine.get(key))} vs {_show(theirs.get(key))}")
    node = theirs.get("node_id")
    agreed = (mine.get("parties") or {}).get(node)
    if not out and agreed and agreed != theirs.get("digest"):
        out.append(
            f"the files of '{node}' are not the ones agreed when the task finished "
            "(another run of the same task, or a modified bundle)"
        )
    if not out and mine.get("parties") != theirs.get("parties"):
        out.append("the digests each bundle recorded for the parties differ")
    return out


def summary(bundle: Bundle) -> dict[str, Any]:
    """The fields `differences` compares, as one party tells another."""
    m = bundle.manifest
    return {
        **{k: m[k] for k in SHARED_FIELDS},
        "node_id": m["node_id"],
        "model_id": m["model_id"],
        "digest": party_digest(m),
        "parties": m["parties"],
    }


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(
            f"{p.get('node_id')}:{p.get('role')}" if isinstance(p, dict) else str(p) for p in value
        ) + "]"
    return repr(value)
