"""Runners registered in LAVIS: ``runner_listwise``."""

from .runner_listwise import RunnerListwise

__all__ = ["RunnerListwise"]
