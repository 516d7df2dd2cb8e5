"""The plugin's commands, one module each; the console module :mod:`lavis_listwise_cli` parses the
arguments and calls them.

- :mod:`.train`: ``train`` and ``evaluate``, LAVIS's ``train.py`` / ``evaluate.py`` flow;
- :mod:`.check_data`: ``check-data``, every annotation and image of a run's datasets;
- :mod:`.relevance_report`: ``relevance-report``, the training relevance against judgments;
- :mod:`.lavis_script`: ``python -m lavis_listwise.commands.lavis_script``, LAVIS's own scripts;
- :mod:`.run_config`: :func:`load_run_config`, the one way a command reads a run YAML.

The console module stays outside this package: ``import lavis_listwise`` imports LAVIS and torch to
register the plugin, and ``lavis-listwise --help`` must answer without them.
"""
