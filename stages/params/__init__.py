"""``params.yaml``, one module per section: its rules, its cross-field checks, and which keys take effect.

``schema`` holds the shared machinery (reading, checking, one-line errors);
``fetch``, ``preprocess``, ``model``, ``train`` and ``evaluate`` each describe
their section, so a stage depends on (and re-runs for) its own sections' rules only;
``pipeline`` holds them all, which ``fetch`` checks first and ``publish`` records.
"""
