"""The label defence of a task, as every party declares it (`label_defence=` on the scheduler):
validated with errors that name the setting and the fix, and turned into the agreement string
the coordinator compares at join, so all parties train under the same defence."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from party_node.errors import ConfigError
from party_node.privacy import defences

#: The agreement map's key for the defence; its value is `LabelDefence.agreement()`.
AGREEMENT_KEY = "label_defence"


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def agreement(self) -> str:
        """'kind=...;name=value;...' in a fixed order (compared by the coordinator)."""
        return ";".join(f"{k}={v}" for k, v in self.model_dump().items())

    def gradient_defence(self) -> Any:
        """The callable applied to outgoing gradients (None: gradients leave as they are)."""
        return None

    def label_defence(self) -> Any:
        """The object that randomises training labels (None: labels are used as they are)."""
        return None


class NoDefence(_Base):
    """Exact gradients (the default): the live metric shows what they reveal."""

    kind: Literal["none"] = "none"


class NoiseDefence(_Base):
    """Clip each outgoing row to C and add Gaussian noise of standard deviation
    noise_multiplier·C; C is `clip` (absolute) or, unset, the batch's `clip_quantile` of row
    norms."""

    kind: Literal["noise"]
    noise_multiplier: float = Field(gt=0, le=100)
    clip: float | None = Field(default=None, gt=0)
    clip_quantile: float = Field(default=0.5, gt=0, le=1)

    def gradient_defence(self) -> Any:
        return defences.GaussianNoise(self.noise_multiplier, self.clip, self.clip_quantile)


class MarvellDefence(_Base):
    """Marvell's optimised noise for binary labels; power is the noise budget in units of the
    squared gap between the two classes' mean gradients."""

    kind: Literal["marvell"]
    power: float = Field(gt=0, le=1000)

    def gradient_defence(self) -> Any:
        return defences.Marvell(self.power)


class GradientRRDefence(_Base):
    """Randomised response on each row's class-mean gradient with ε over `classes` labels."""

    kind: Literal["gradient_rr"]
    epsilon: float = Field(ge=0, le=20)
    classes: int = Field(ge=2, le=100_000)
    debias: float = Field(default=0.0, ge=0, le=1)

    def gradient_defence(self) -> Any:
        return defences.GradientRR(self.epsilon, self.classes, self.debias)


class ClassNoiseDefence(_Base):
    """Gaussian noise in the span of the batch's class-mean gradients, each row's of
    noise_multiplier times its own deviation from the batch centre within that span."""

    kind: Literal["class_noise"]
    noise_multiplier: float = Field(gt=0, le=100)
    classes: int = Field(ge=2, le=100_000)

    def gradient_defence(self) -> Any:
        return defences.ClassNoise(self.noise_multiplier, self.classes)


class LabelRRDefence(_Base):
    """Label DP: the host trains on randomised-response labels (ε per round, fresh each round)."""

    kind: Literal["label_rr"]
    epsilon: float = Field(ge=0, le=20)
    classes: int = Field(ge=2, le=100_000)

    def label_defence(self) -> Any:
        return defences.LabelRR(self.epsilon, self.classes)


LabelDefence = Annotated[
    NoDefence
    | NoiseDefence
    | MarvellDefence
    | GradientRRDefence
    | ClassNoiseDefence
    | LabelRRDefence,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter = TypeAdapter(LabelDefence)
KINDS = ("none", "noise", "marvell", "gradient_rr", "class_noise", "label_rr")


def parse_defence(value: Any) -> _Base:
    """A defence from None, a kind name ('none'), a dict ({'kind': 'marvell', 'power': 4}) or a
    settings object; a ConfigError naming the setting otherwise."""
    if value is None:
        return NoDefence()
    if isinstance(value, _Base):
        return value
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"label_defence must be a dict such as {{'kind': 'marvell', 'power': 4}}, got "
            f"{type(value).__name__}"
        )
    if value.get("kind") not in KINDS:
        raise ConfigError(
            f"label_defence kind {value.get('kind')!r} is unknown; use one of "
            f"{', '.join(KINDS)} (docs/privacy.md)"
        )
    try:
        return _ADAPTER.validate_python(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'kind'}: {err['msg']}"
            + (f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else "")
            for err in exc.errors()
        )
        raise ConfigError(
            f"label_defence {value['kind']!r} is invalid: {problems} (docs/privacy.md lists "
            "each defence's settings)"
        ) from None
