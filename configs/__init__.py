"""Model and dataset default YAMLs (LAVIS style); installed as ``lavis_listwise.configs``."""
