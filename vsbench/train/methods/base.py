"""The Sparsifier interface: a name, a pydantic options model, and hooks the training loop calls."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from vsbench.train.sparsity import remove_parametrizations


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sparsifier:
    """Dense certified training with no-op hooks; subclasses override what they need.

    ``run`` owns the method's phases (default: one ``train`` phase of ``cfg.epochs``);
    ``finalize`` returns the model to save (masks baked in, compacted for structured methods).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None):
        self.opt = options if options is not None else self.Options()

    @classmethod
    def check(cls, cfg) -> None:
        """Raise ``ValueError`` if the method cannot train ``cfg`` (run when the config is built)."""

    def run(self, trainer, model: nn.Module) -> nn.Module:
        self.init_masks(model, trainer.cfg)
        trainer.fit("train", model, trainer.cfg.epochs, hooks=self)
        return self.finalize(model)

    def init_masks(self, model: nn.Module, cfg) -> None:
        pass

    def before_step(self, model: nn.Module, step: int, total_steps: int) -> bool:
        """Called before step ``step`` (from 1); True: keep the dense weight gradients of this
        step for ``after_step`` (``Step.weight_grads``)."""
        return True

    def after_step(self, model: nn.Module, step) -> None:
        pass

    def at_epoch_end(self, model: nn.Module, epoch: int) -> None:
        pass

    def finalize(self, model: nn.Module) -> nn.Module:
        return remove_parametrizations(model)
