"""Turning a finished party's Python models into TorchScript for its bundle.

Tracing needs an example input: `ExampleRecorder` keeps the positional tensors of the feature
model's last call (the final test's last batch), with a forward pre-hook. The host's fusion
lives in user code (`predict_a_batch`), so `Predictor` wraps it with the inference model as
a module taking the parties' projections in the order of their feature keys; tracing that
records the fusion and the inference model as one graph. Every trace is checked against the
Python model on the example and on a single row, since a trace silently freezes Python
control flow and sometimes the batch size.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

#: Rows of the recorded input used to trace and check (fewer keeps the bundle small).
EXAMPLE_ROWS = 8
#: How far a trace may drift from the Python model before it is refused.
TRACE_TOLERANCE = 1e-5


class ExampleRecorder:
    """Remembers the positional tensors of `model`'s latest call (a reference, no copy)."""

    def __init__(self, model: nn.Module) -> None:
        self.inputs: tuple[torch.Tensor, ...] | None = None
        self.problem = "the feature model was never called (iterate_*_feature must call it)"
        self._handle = model.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and all(isinstance(a, torch.Tensor) for a in args):
            self.inputs = tuple(a.detach() for a in args)
        else:
            self.inputs = None
            self.problem = "the feature model was called with arguments that are not tensors"

    def example(self) -> tuple[torch.Tensor, ...] | None:
        if self.inputs is None:
            return None
        return tuple(a[:EXAMPLE_ROWS] for a in self.inputs)

    def close(self) -> None:
        self._handle.remove()


class Predictor(nn.Module):
    """`predict_a_batch` with the inference model as a module: forward(*projections) in the
    order of `keys`; the inference model is a submodule so its weights are traced as such."""

    def __init__(
        self,
        infer_model: nn.Module,
        predict_a_batch: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        keys: Sequence[str],
        projection_type: type[dict] = dict,
    ) -> None:
        super().__init__()
        self.infer_model = infer_model
        self._predict = predict_a_batch
        self._keys = list(keys)
        self._projection_type = projection_type

    def forward(self, *projections: torch.Tensor) -> torch.Tensor:
        return self._predict(self._projection_type(zip(self._keys, projections, strict=True)))


def trace(
    module: nn.Module, example: tuple[torch.Tensor, ...], what: str
) -> torch.jit.ScriptModule:
    """TorchScript of `module` (in eval mode, without autograd), checked against the module
    on `example` and on its first row. Raises ValueError saying why it cannot be traced."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings are re-checked below; FutureWarning
            try:
                traced = torch.jit.trace(module, example, check_trace=False)
            except Exception as exc:
                raise ValueError(f"torch.jit.trace of the {what} failed: {exc}") from None
            for inputs, rows in ((example, "the example batch"), (_first_row(example), "one row")):
                expected = _as_tensor(module(*inputs), what)
                got = _as_tensor(traced(*inputs), what)
                if got.shape != expected.shape or not torch.allclose(
                    got, expected, atol=TRACE_TOLERANCE, rtol=TRACE_TOLERANCE
                ):
                    raise ValueError(
                        f"the traced {what} differs from the Python one on {rows} (shape "
                        f"{list(got.shape)} vs {list(expected.shape)}): its forward depends on the "
                        "batch size or on Python control flow; make it traceable "
                        "(torch.jit.trace) to serve it"
                    )
    finally:
        module.train(was_training)
    return traced


def output_shape(module: nn.Module, example: tuple[torch.Tensor, ...], what: str) -> list[int]:
    """Shape of one row of `module`'s output on `example`."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = _as_tensor(module(*example), what)
    finally:
        module.train(was_training)
    return list(out.shape[1:])


def describe_inputs(example: tuple[torch.Tensor, ...]) -> list[dict[str, Any]]:
    """Shape (without the batch dimension) and dtype of each input, for the manifest."""
    return [{"shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch.")}
            for t in example]


def _first_row(example: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t[:1] for t in example)


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"the {what} returned {type(value).__name__}; it must return a tensor")
    return value


def export_model(
    writer: Any,
    stem: str,
    module: nn.Module,
    example: tuple[torch.Tensor, ...] | None,
    problem: str,
    what: str,
    save_state: bool = True,
) -> dict[str, Any]:
    """Save `module`'s state dict as `<stem>.pt` (unless `save_state` is false) and, when it
    traces, its TorchScript as `<stem>.ts`; the manifest entry says which, and why not."""
    entry: dict[str, Any] = {
        "state": writer.save_state(f"{stem}.pt", module.state_dict()) if save_state else None,
        "script": None,
        "error": None,
    }
    if example is None:
        entry["error"] = f"no example input to trace the {what} with: {problem}"
        return entry
    try:
        entry["script"] = writer.save_script(f"{stem}.ts", trace(module, example, what))
        entry["inputs"] = describe_inputs(example)
        entry["output_shape"] = output_shape(module, example, what)
    except ValueError as exc:
        entry["error"] = str(exc)
    return entry
