"""The model bundle a finished task leaves at each party (party_node.serving.bundle): the
role saves its models, the parties agree on one model id, the bundle moves into place. A
party that cannot write its bundle tells the others, so nobody waits for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from party_node.errors import TaskFailed
from party_node.serving.bundle import Bundle, BundleWriter, party_digest


def export_bundle(role: Any, out_dir: Path, task_id: str, final_round: int) -> Bundle:
    """Write `out_dir/model/` for `role`'s party and agree on the model id with the others."""
    s = role.s
    writer = BundleWriter(Path(out_dir) / "model")
    try:
        fields: dict[str, Any] = {
            "task_id": task_id,
            "node_id": role.node_id,
            "role": s._role,
            "feature_key": s.feature_key,
            "mode": "secure" if getattr(s, "_secure", False) else "plain",
            "final_round": int(final_round),
            "participants": sorted(
                (
                    {"node_id": p.node_id, "role": p.role, "feature_key": p.feature_key}
                    for p in role.participants
                ),
                key=lambda p: p["node_id"],
            ),
        }
        fields.update(role.bundle_fields(writer))
        digest = party_digest(writer.seal(fields))
    except TaskFailed:
        writer.discard()
        raise
    except Exception as exc:
        writer.discard()
        error = f"{s._role} '{role.node_id}' could not write its model bundle: {exc}"
        role.agree_bundle("", error=error)  # raises TaskFailed(error) after telling the peers
        raise TaskFailed(error) from None
    try:
        parties = role.agree_bundle(digest)
    except BaseException:
        writer.discard()
        raise
    return writer.commit(parties)
