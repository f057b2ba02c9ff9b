"""Planning: what the fleet can do, measured, and the placement chosen from it.

Owns profiling (per-block compute on every host, links probed by real agents), the profile
store, the planner and its plan records, the server's calibration and the model facts
behind split points. Built on the fleet; knows nothing of the network's shaping or of
runs (what a profile is keyed by, and the short trainings calibration needs, are passed in).
"""
