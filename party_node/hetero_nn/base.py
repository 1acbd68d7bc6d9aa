"""What host and collaborator schedulers share: constructor options, the attributes user
code reads (`current_round`, `tb_writer`, ...), and the two ways to run (`_run`, `launch_task`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from torch import nn, optim

from party_node.errors import ConfigError
from party_node.privacy.settings import parse_defence
from party_node.runtime.training_mode import parse_training_mode

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class HeteroNNScheduler(ABC):
    """Base of every HeteroNN scheduler. Subclasses set `_role`."""

    _role: str = ""
    _secure: bool = False

    def __init__(
        self,
        feature_key: str,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        log_rounds: int = 0,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
    ) -> None:
        if not isinstance(feature_key, str) or not feature_key:
            raise ConfigError("feature_key must be a non-empty string, e.g. feature_key='bank'")
        for name, value in (
            ("calculation_timeout", calculation_timeout),
            ("schedule_timeout", schedule_timeout),
        ):
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(log_rounds, int) or log_rounds < 0:
            raise ConfigError(f"log_rounds must be an integer >= 0, got {log_rounds!r}")
        if not isinstance(max_rounds, int) or max_rounds < 0:
            raise ConfigError(f"max_rounds must be an integer >= 0, got {max_rounds!r}")
        self.feature_key = feature_key
        self.max_rounds = max_rounds
        self.calculation_timeout = float(calculation_timeout)
        self.schedule_timeout = float(schedule_timeout)
        self.log_rounds = log_rounds
        self.is_feature_trainable = is_feature_trainable
        self.current_round = 0
        self.id = ""
        self.task_id = ""
        self.feature_model: nn.Module | None = None
        self.feature_optimizer: optim.Optimizer | None = None
        self._tb_writer: SummaryWriter | None = None
        self._output_dir: Any = None

    # ---- user hooks (seed API) -------------------------------------------------------------
    @abstractmethod
    def load_local_ids(self) -> list[str]:
        """All local sample ids; the same sample must have the same id at every party."""

    @abstractmethod
    def split_dataset(self, id_intersection: set[str]) -> tuple[set[str], set[str]]:
        """Split the intersection into (train ids, test ids); identical logic everywhere."""

    @abstractmethod
    def build_feature_model(self) -> nn.Module:
        """This party's feature model."""

    @abstractmethod
    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        """The optimizer of the feature model (the framework steps it)."""

    @abstractmethod
    def iterate_train_feature(self, feature_model: nn.Module, train_ids: Any) -> Iterable[Any]:
        """Yield one batch of features (host: features and labels) at a time."""

    @abstractmethod
    def iterate_test_feature(self, feature_model: nn.Module, test_ids: Any) -> Iterable[Any]:
        """Yield the test batches like `iterate_train_feature`."""

    def predict_feature(self, feature_model: nn.Module, ids: list[str]) -> Any:
        """Optional, for serving and batch prediction: this party's features for new `ids`,
        like one batch of iterate_test_feature (host: without labels). Return
        ``feature_model(rows)`` with one row per id in the order of `ids`, or
        ``(found_ids, feature_model(rows))`` when some ids are not held here (`found_ids` in
        the order of `ids`). `feature_model` is the bundle's TorchScript copy."""
        raise NotImplementedError("predict_feature")

    def validate_context(self) -> None:
        """Check the environment before training; raise to stop early with a message."""
        if self.feature_model is None:
            raise ConfigError("build_feature_model() returned None; return an nn.Module")
        if self.feature_optimizer is None:
            raise ConfigError("build_feature_optimizer() returned None; return an optimizer")

    # ---- latency tolerance (docs/performance.md) ------------------------------------------------
    @property
    def training_mode(self) -> Any:
        """The task's training mode ('exact' unless set); every party must set the same
        (checked at join)."""
        return getattr(self, "_training_mode", None) or parse_training_mode(None)

    @training_mode.setter
    def training_mode(self, value: Any) -> None:
        """'exact', 'pipelined' or a dict such as ``{"kind": "pipelined", "depth": 8}``;
        checked now, so a bad setting fails before anything runs."""
        self._training_mode = parse_training_mode(value)

    # ---- label privacy (docs/privacy.md) ------------------------------------------------------
    @property
    def label_defence(self) -> Any:
        """The task's label defence; every party must set the same (checked at join)."""
        return getattr(self, "_label_defence", None) or parse_defence(None)

    @label_defence.setter
    def label_defence(self, value: Any) -> None:
        """A dict such as ``{"kind": "marvell", "power": 4}``, a kind name, or None; checked
        now, so a bad setting fails before anything runs."""
        self._label_defence = parse_defence(value)

    # ---- framework-provided attributes -------------------------------------------------------
    @property
    def tb_writer(self) -> SummaryWriter:
        """TensorBoard writer logging to ``./<node_id>/<task_id>/tb``."""
        if self._tb_writer is None:
            from party_node.runtime.outputs import RecordingWriter

            if self._output_dir is None:
                raise RuntimeError("tb_writer is available once the task runs (_run/launch_task)")
            self._tb_writer = RecordingWriter(log_dir=str(self._output_dir / "tb"))
        return self._tb_writer

    # ---- running ---------------------------------------------------------------------------------
    def _run(
        self, id: str, task_id: str, is_initiator: bool = False, recover: bool = False
    ) -> None:
        """Run as node `id` of `task_id` inside ``mock_context`` (the seed's local simulation)."""
        from party_node.app import run_mock

        run_mock(self, node_id=id, task_id=task_id, is_initiator=is_initiator, recover=recover)

    def launch_task(self, task_id: str, recover: bool = False, **settings: Any) -> None:
        """Join a real deployment; settings come from ``HETERONN_NODE_*`` env vars, a config
        file named by ``HETERONN_NODE_CONFIG``, or keyword arguments (coordinator, node_id, ...)."""
        from party_node.app import run_node
        from party_node.settings import NodeSettings

        node_settings = NodeSettings.load(task_id=task_id, recover=recover, **settings)
        run_node(self, node_settings)

    def launch_serving(self, bundle: Any, **settings: Any) -> None:
        """Serve this party's trained model from its `bundle` (the task's ``model/`` folder)
        until SIGTERM or Ctrl-C; settings as `heteronn serve` (``HETERONN_SERVE_*`` env vars
        or keyword arguments: node_id, listen, collaborators, tls_*, limits, ...)."""
        from party_node.app import run_serving
        from party_node.settings import ServingSettings

        run_serving(self, ServingSettings(bundle=bundle, **settings))

    def batch_predict(
        self, bundle: Any, output: Any, ids: list[str] | None = None, **settings: Any
    ) -> dict[str, Any]:
        """Host: predict `ids` (default: load_local_ids()) with the collaborators' serving
        nodes, into the CSV `output`; returns the report (ids predicted, missing, timings)."""
        from pathlib import Path

        from party_node.app import run_batch_predict
        from party_node.settings import ServingSettings

        batch_rows = settings.pop("batch_rows", 8192)
        serving = ServingSettings(bundle=bundle, **settings)
        report = run_batch_predict(self, serving, Path(output), ids=ids, batch_rows=batch_rows)
        return report.as_dict()
