"""``model-swap``'s command line: ``up`` (a worker and a store together), ``ps``,
``status``, ``tiny-models`` and the policy lab's commands.

It sits above both services (``up`` starts them); ``model_swap/`` below it
holds only code the services share and imports neither of them.
"""
