"""Run LAVIS's own ``train.py`` or ``evaluate.py`` with the plugin registered.

    python -m lavis_listwise.commands.lavis_script LAVIS/train.py --cfg-path run.yaml [--options k=v ...]
    python -m lavis_listwise.commands.lavis_script LAVIS/evaluate.py --cfg-path run.yaml
    torchrun --nproc_per_node=8 -m lavis_listwise.commands.lavis_script LAVIS/train.py --cfg-path run.yaml

The scripts come from a clone of github.com/salesforce/LAVIS (the ``salesforce-lavis`` wheel does
not ship them). LAVIS has no plugin entry point: a script parses its YAML right after importing
LAVIS, and ``Config`` resolves ``model.arch``, the task, the runner and the dataset builders at
once, so the plugin must be registered before the script starts. This module is inside the
package, so running it registers the plugin; it then checks the YAML's keys as ``lavis-listwise
train`` does and runs the script as ``python SCRIPT ARGS`` would: as ``__main__``, with ``sys.argv``
and ``sys.path[0]`` set the same way. The installed LAVIS is the one used.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path

import lavis_listwise  # noqa: F401  (registers the plugin before the script parses its config)
from listwise_ranking.errors import ConfigError, ListwiseError

__all__ = ["main", "run_lavis_script"]

PROG = "python -m lavis_listwise.commands.lavis_script"


def run_lavis_script(script: str, script_args: list[str]) -> None:
    """Check the ``--cfg-path`` / ``--options`` among ``script_args``, then run ``script`` as ``__main__``.

    Raises:
        ConfigError: ``script`` is not a file, or the YAML and options are refused by
            :func:`~lavis_listwise.config_check.check_config`.
    """
    from ..config import check_run_device
    from ..config_check import check_config
    from ..config_io import read_yaml_file

    path = Path(script)
    if not path.is_file():
        raise ConfigError(
            f"SCRIPT: {script!r} does not exist; give the path of LAVIS's train.py or evaluate.py (in a "
            "clone of https://github.com/salesforce/LAVIS: the salesforce-lavis wheel does not ship them)"
        )
    # the same --cfg-path / --options the scripts parse; anything else is the script's business
    config_args = argparse.ArgumentParser(add_help=False)
    config_args.add_argument("--cfg-path")
    config_args.add_argument("--options", nargs="+", default=[])
    known, _ = config_args.parse_known_args(script_args)
    if known.cfg_path is not None and os.path.isdir(known.cfg_path):
        raise ConfigError(f"--cfg-path: {known.cfg_path!r} is a directory, not a YAML file")
    if known.cfg_path is not None:
        check_config(read_yaml_file(known.cfg_path), known.options or [])
        check_run_device(known.cfg_path, known.options or [])
    sys.argv = [str(path), *script_args]
    sys.path.insert(0, str(path.resolve().parent))  # as `python SCRIPT` puts the script's directory first
    from ..distributed import process_group_released

    with process_group_released():  # LAVIS's scripts never destroy the process group they set up
        runpy.run_path(str(path), run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} SCRIPT [--cfg-path YAML] [--options key=value ...] [other script arguments]",
        description="Run LAVIS's train.py or evaluate.py with lavis-listwise registered (its archs, task, "
        "runner and dataset builders), after the YAML key checks of `lavis-listwise train`.",
    )
    parser.add_argument(
        "script", metavar="SCRIPT", help="LAVIS's train.py or evaluate.py (from a LAVIS clone)"
    )
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # argparse would also list the (optional) script arguments as missing
        parser.error("the following argument is required: SCRIPT")
    args = parser.parse_args(argv)
    try:
        run_lavis_script(args.script, args.script_args)
    except ListwiseError as err:
        if os.environ.get("LAVIS_LISTWISE_TRACEBACK"):
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
