"""Runnable experiment YAMLs (``blip/``, ``albef/``, ``demo/``); installed as ``lavis_listwise.projects``."""
