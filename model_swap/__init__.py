"""Pieces shared by the model store server and the inference worker.

Model-name rules, the JSON error envelope, environment-variable parsing,
the in-process WSGI server, console logging, tiny test models and the
`model-swap` command line.
"""
