"""`make demo SEED=n`: the factories seed each party's process, so a seed fixes every model
init (reproducible runs) while host and collaborator still start from different weights."""

from __future__ import annotations

import sys

import torch

from examples.mnist_halves import collaborator, host


def _init(factory, **kwargs) -> dict[str, torch.Tensor]:
    scheduler = factory(data_root="unused", **kwargs)
    return scheduler.build_feature_model().state_dict()


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_seed_fixes_every_party_init_and_parties_differ() -> None:
    first, again = _init(host.make_scheduler, seed=3), _init(host.make_scheduler, seed=3)
    assert _same(first, again)
    assert not _same(first, _init(host.make_scheduler, seed=4))
    assert not _same(first, _init(collaborator.make_scheduler, seed=3))


def test_demo_passes_seed_to_every_party(tmp_path, monkeypatch) -> None:
    """The demo's --seed reaches both parties' scheduler_args (read back from their configs);
    no process is started."""
    from examples.mnist_halves import demo

    class NoProcess:
        def __init__(self, *args: object, **kwargs: object) -> None: ...
        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(demo, "watch", lambda *a, **k: 0)
    monkeypatch.setattr(demo, "create_task", lambda *a, **k: None)
    monkeypatch.setattr(demo.data, "mnist", lambda *a, **k: None)
    monkeypatch.setattr(demo.subprocess, "Popen", NoProcess)
    monkeypatch.setattr(sys, "argv", ["demo", "--seed", "7", "--out", str(tmp_path)])
    assert demo.main() == 0
    for name in ("host.toml", "collaborator.toml"):
        assert "seed = 7" in (tmp_path / name).read_text(), name
