import importlib
import subprocess
import sys

import lavis_listwise


def _run(*args, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, **kwargs)


def test_import_twice_reload_and_submodule_first():
    code = (
        "import lavis_listwise.losses.registry as r, importlib\n"
        "import lavis_listwise.losses.smooth_ndcg\n"  # a submodule before the package
        "import lavis_listwise, lavis_listwise.losses as L\n"
        "import lavis_listwise\n"
        "importlib.reload(lavis_listwise.losses.listwise)\n"
        "importlib.reload(lavis_listwise)\n"
        "print(sorted(r.list_losses()))\n"
    )
    out = _run("-c", code, check=True)
    assert out.stdout.strip() == "['smooth_ndcg', 'triplet']"


def test_reload_in_process_keeps_registry():
    from lavis_listwise.losses import get_loss_class

    importlib.reload(lavis_listwise)
    importlib.reload(importlib.import_module("lavis_listwise.losses.listwise"))
    assert get_loss_class("triplet").__name__ == "TripletLoss"


def test_cli_version_and_help():
    out = _run("-m", "lavis_listwise", "--version", check=True)
    assert out.stdout.strip() == f"lavis-listwise {lavis_listwise.__version__}"
    out = _run("-m", "lavis_listwise", "--help", check=True)
    assert all(cmd in out.stdout for cmd in ("demo", "train", "evaluate"))
    bad = _run("-m", "lavis_listwise", "no-such-command")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
