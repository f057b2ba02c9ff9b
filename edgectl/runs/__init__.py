"""Runs: training runs orchestrated end to end, and everything computed from their records.

Owns the train options, the run orchestration (plan, shape, start agents, follow events),
run records, summaries, reports and plots, and bench sweeps. Composes the layers below:
planning, the network and the fleet.
"""
