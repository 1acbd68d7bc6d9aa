"""The id sets every PSI benchmark uses: N ids per party, half of them shared.

No dependencies, so the openmined-psi peer (in its own venv) imports it too and both
measurements run on exactly the same sets."""

from __future__ import annotations


def host_ids(n: int) -> list[str]:
    return [f"customer-{i:010d}" for i in range(n)]


def collaborator_ids(n: int) -> list[str]:
    return [f"customer-{i:010d}" for i in range(n // 2, n // 2 + n)]


def intersection_size(n: int) -> int:
    return n - n // 2
