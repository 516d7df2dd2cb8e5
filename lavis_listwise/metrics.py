"""``lavis_listwise.metrics``: the plugin's name for :mod:`listwise_ranking.metrics` (the same objects).

The code lives in the torch-only core package ``listwise_ranking``, which imports no LAVIS; this
module keeps the plugin's public names (``docs/python-api.md``) for LAVIS users.
"""

from listwise_ranking.metrics import *  # noqa: F403
from listwise_ranking.metrics import __all__  # noqa: F401
