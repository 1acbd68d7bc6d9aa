"""Paired to/from-proto functions of the serving wire (proto/heteronn/v1/serving.proto)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from heteronn.v1 import common_pb2, serving_pb2
from party_node.errors import BadMessage
from party_node.serving.hooks import FeatureRows
from party_node.serving.predict import Predictions
from wire.tensor_codec import TensorDecodeError, tensor_from_proto, tensor_to_proto

OK = serving_pb2.PREDICTION_STATUS_OK
NOT_FOUND = serving_pb2.PREDICTION_STATUS_NOT_FOUND


def predict_response(
    model_id: str, ids: Sequence[str], result: Predictions
) -> tuple[serving_pb2.PredictResponse, int]:
    """The response for `ids` (repeats allowed) from a batch's result; and how many were
    NOT_FOUND."""
    index = {item: i for i, item in enumerate(result.ids)}
    scores = result.scores.tolist()
    width = result.scores.shape[1] if result.scores.dim() == 2 else 0
    classes = result.scores.argmax(1).tolist() if width > 1 and scores else []
    out = serving_pb2.PredictResponse(model_id=model_id)
    not_found = 0
    for item in ids:
        i = index[item]
        row = result.rows[i]
        if row >= 0:
            out.predictions.add(
                id=item,
                status=OK,
                scores=scores[row],
                predicted_class=classes[row] if classes else -1,
            )
        else:
            not_found += 1
            out.predictions.add(
                id=item, status=NOT_FOUND, predicted_class=-1, missing_at=result.missing_at(i)
            )
    return out, not_found


def rows_to_embed_response(rows: FeatureRows) -> serving_pb2.EmbedResponse:
    return serving_pb2.EmbedResponse(
        found=rows.found, features=tensor_to_proto(rows.features.to(torch.float32))
    )


def rows_from_embed_response(
    response: serving_pb2.EmbedResponse, asked: int, width: int, peer: str
) -> FeatureRows:
    """Check a collaborator's answer: one flag per id asked, one row of `width` per found."""
    found = list(response.found)
    if len(found) != asked:
        raise BadMessage(f"{peer} answered {len(found)} flags for {asked} ids")
    try:
        features = tensor_from_proto(response.features)
    except TensorDecodeError as exc:
        raise BadMessage(f"{peer} sent bad embeddings: {exc}") from None
    if features.dtype != torch.float32 or tuple(features.shape) != (sum(found), width):
        raise BadMessage(
            f"{peer} sent embeddings of shape {list(features.shape)} ({features.dtype}); "
            f"expected [{sum(found)}, {width}] float32"
        )
    return FeatureRows(found, features)


def describe_to_proto(summary: dict[str, Any]) -> serving_pb2.DescribeModelResponse:
    return serving_pb2.DescribeModelResponse(
        node_id=summary["node_id"],
        model_id=summary["model_id"],
        party_digest=summary["party_digest"],
        task_id=summary["task_id"],
        final_round=summary["final_round"],
        mode=summary["mode"],
        participants=[serving_pb2.ModelParticipant(**p) for p in summary["participants"]],
        parties=summary["parties"],
        output_width=summary["output_width"],
    )


def describe_from_proto(msg: serving_pb2.DescribeModelResponse) -> dict[str, Any]:
    """The summary as bundle.differences compares it."""
    return {
        "node_id": msg.node_id,
        "model_id": msg.model_id,
        "digest": msg.party_digest,
        "task_id": msg.task_id,
        "final_round": msg.final_round,
        "mode": msg.mode,
        "participants": [
            {"node_id": p.node_id, "role": p.role, "feature_key": p.feature_key}
            for p in msg.participants
        ],
        "parties": dict(msg.parties),
        "output_width": msg.output_width,
    }


def message_to_proto(msg: dict[str, Any]) -> common_pb2.Payload:
    """A secure-layer message (tensors and byte blobs by name) as a Payload."""
    payload = common_pb2.Payload()
    for name, value in msg.items():
        if isinstance(value, bytes):
            payload.blobs[name] = value
        else:
            payload.tensors[name].CopyFrom(tensor_to_proto(value))
    return payload


def message_from_proto(payload: common_pb2.Payload) -> dict[str, Any]:
    """The message a Payload carries; BadMessage for a tensor that does not decode."""
    try:
        tensors = {k: tensor_from_proto(v) for k, v in payload.tensors.items()}
    except TensorDecodeError as exc:
        raise BadMessage(f"a secure message carries a bad tensor: {exc}") from None
    return {**tensors, **dict(payload.blobs)}
