"""The evaluation family: the `evaluate` step, LM evaluation, latency, the machine probe, goals and reports."""
