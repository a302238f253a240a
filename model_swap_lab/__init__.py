"""The policy lab: traces, a simulator and a replay tool for choosing a cache policy.

Never imported by the servers. It imports the store's policy classes and its
pure ``decide`` (``model_store_server.cache_policy`` / ``decision``), so the
simulator and the live store run one implementation of every policy.

- ``trace.py``: the trace and sizes CSV formats (errors name the line).
- ``generate.py``: seeded synthetic traces (``model-swap trace generate``).
- ``azure.py``: the Azure Functions 2019 trace as requests (``model-swap trace azure``).
- ``simulate.py``: the simulator and the offline optimum (``model-swap simulate``).
- ``replay.py``: a trace against a live store (``model-swap replay``).
- ``calibrate.py``: a running store's settings and learned rates, for the simulator.
"""
