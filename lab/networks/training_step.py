"""How the run's compiles build a training step: which Adam (--adam) and whether XLA compiles it (--xla).

Both are the run's choice, set once per process (`use`) before the first compile and read by
`lab.networks.adam.adam` and `lab.networks.models.compile_for_classification`, so that no
experiment passes them along.
"""

from __future__ import annotations

import dataclasses

ADAM_CHOICES = ("fused", "keras")
# --xla -> compile()'s jit_compile. auto is Keras's own default: XLA for a GPU, none on a CPU,
# under op determinism, with run_eagerly, or for a model with a layer XLA cannot compile.
XLA_CHOICES = ("auto", "on", "off")
JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


@dataclasses.dataclass(frozen=True)
class TrainingStep:
    """The run's training-step choices.

    Args:
        adam: `fused` (`lab.networks.adam.FusedAdam`) or `keras` (Keras's own Adam).
        xla: `auto` (Keras's default), `on` or `off`.
    """

    adam: str = "fused"
    xla: str = "auto"

    def __post_init__(self):
        if self.adam not in ADAM_CHOICES:
            raise ValueError(f"unknown Adam {self.adam!r}: use one of {', '.join(ADAM_CHOICES)}")
        if self.xla not in XLA_CHOICES:
            raise ValueError(f"unknown XLA choice {self.xla!r}: use one of {', '.join(XLA_CHOICES)}")

    @property
    def jit_compile(self) -> str | bool:
        """compile()'s `jit_compile` for this choice."""
        return JIT_COMPILE[self.xla]


_current = [TrainingStep()]


def use(step: TrainingStep) -> None:
    """Makes every later compile of this process build `step`."""
    _current[0] = step


def current() -> TrainingStep:
    """The training step this process's compiles build."""
    return _current[0]
