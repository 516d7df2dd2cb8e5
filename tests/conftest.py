import os

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    """The real bundled all-MiniLM-L6-v2 encoder, loaded once."""
    from lavis_listwise.relevance import SentenceEncoder

    return SentenceEncoder()
