"""Stand-in for spaCy on the GPU machine only (benchmarks/device/run_checks.sh puts it on PYTHONPATH).

LAVIS 1.0.2 imports spaCy at module level in ``lavis/models/img2prompt_models/img2prompt_vqa.py``,
so ``import lavis`` fails without it, although nothing but ``Img2PromptVQA.__init__`` (and BLIP-2 T5
lemmatisation, which imports it lazily) ever uses it. The GPU image has no spaCy, and spaCy 3.8 with
its compiled dependencies (thinc, blis, srsly, preshed, cymem, murmurhash, pydantic) is ~60 MB of
cp312 wheels: more than the 64 MiB a device call may carry next to everything else. This module lets
the import succeed and fails loudly on any use, so no result can silently depend on it.
"""

__version__ = "0.0.0+device-stub"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"spacy.{name}: spaCy is not installed on the GPU machine; this stub "
        "(benchmarks/device/stubs/spacy) only lets LAVIS import"
    )
